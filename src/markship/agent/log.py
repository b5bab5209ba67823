"""Event log of long-running commands: one line per event on stderr, UTC timestamps."""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime
from typing import TextIO


class EventLog:
    """`log("mark.ok", name=..., hold_ms=...)` → `2026-11-25T19:02:11.123Z info mark.ok ...`."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, event: str, level: str = "info", **fields: object) -> None:
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        if self.as_json:
            line = json.dumps({"time": stamp, "level": level, "event": event, **fields},
                              default=str)
        else:
            parts = [stamp, level, event]
            for key, value in fields.items():
                text = str(value)
                # Quoted (JSON escapes) unless plainly printable: a value from untrusted
                # data (a record's field, a request) never splits or forges a log line.
                plain = text and text.isprintable() and not any(c in text for c in ' "=')
                parts.append(f"{key}={text if plain else json.dumps(text)}")
            line = " ".join(parts)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
