"""`markship drill` command (see markship.drill)."""

from __future__ import annotations
