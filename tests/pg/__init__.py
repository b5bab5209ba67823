"""Tests of markship.pg."""
