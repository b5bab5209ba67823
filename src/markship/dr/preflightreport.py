"""One line of a `markship preflight` report: a check's scope, status, message and fix, as
text or as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]
SYMBOLS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗"}


@dataclass(frozen=True)
class Check:
    """One line of preflight: `scope` is a server name, or "repository", "config", "key"."""

    scope: str
    name: str
    status: Status
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{SYMBOLS[self.status]} {self.scope}: {self.message}"
        return f"{text}: {self.fix}" if self.fix and self.status != "ok" else text

    def as_dict(self) -> dict[str, str]:
        return asdict(self)
