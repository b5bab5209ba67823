"""The lean archive path: wal-push and wal-fetch (standard library at start-up)."""
