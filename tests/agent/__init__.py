"""Tests of markship.agent."""
