"""Tests of markship.repository."""
