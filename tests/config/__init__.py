"""Tests of markship.config."""
