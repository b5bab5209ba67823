"""Base backups, restores, verification, status, retention, file sets and dumps."""
