"""Tests of markship.dr."""
