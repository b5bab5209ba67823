"""PostgreSQL itself: SQL, its programs, data directories, command strings, LSNs."""
