"""The CRM side: organizations, contacts, folders, default folders, distribution groups."""
