"""`markship preflight` command (see markship.preflight)."""

from __future__ import annotations
