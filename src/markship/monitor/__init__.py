"""Watching the group: one snapshot of its state for status, the web page, metrics and checks."""
