"""Backup and restore: the archive (archive.py), making and restoring one (operations.py)
and the daily schedule (schedule.py); the database's part is store/backup.py."""
