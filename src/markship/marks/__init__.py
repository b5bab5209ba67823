"""Group marks: taking them, choosing one, streaming WAL up to them, resolving 2PC."""
