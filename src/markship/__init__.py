"""markship: keep a group of PostgreSQL servers recoverable to one common point."""

__version__ = "0.1.0"
