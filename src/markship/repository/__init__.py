"""Repository access: one interface, one backend per kind of storage."""
