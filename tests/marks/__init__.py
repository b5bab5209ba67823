"""Tests of markship.marks."""
