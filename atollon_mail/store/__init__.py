"""The store: peewee models over SQLite or PostgreSQL, reached only through `Store.run`."""

# The modules that register hooks for an origin kind (store.origins), loaded with the
# store so the queue's outcomes reach them whichever part of the store is used first.
import atollon_mail.store.campaign_recipients  # noqa: F401
