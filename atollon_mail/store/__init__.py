"""The store: peewee models over SQLite or PostgreSQL, reached only through `Store.run`."""
