"""Tests of markship.backup."""
