"""The CRM side: organizations, contacts, folders, default folders, distribution groups."""

# The store is loaded before any module of this package: its package imports the modules
# that register their queue hooks, and those import crm.filters, which must not be found
# half-loaded when a caller imports crm first (crm.normalize uses the store's helpers).
import atollon_mail.store  # noqa: F401
