"""Tests of markship.monitor."""
