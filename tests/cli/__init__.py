"""Tests of markship.cli."""
