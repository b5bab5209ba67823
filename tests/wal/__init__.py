"""Tests of markship.wal."""
