"""The agent's status page (`/`): a placeholder until the full page is written."""

from __future__ import annotations

from html import escape

from markship.config.model import Config
from markship.monitor.snapshot import Snapshot


def render(snapshot: Snapshot, config: Config) -> str:
    """The page for `snapshot`: the group, the RPO now, each server's line."""
    newest = snapshot.status.newest
    rpo = "no complete mark" if newest is None else f"{newest.age_seconds:.0f} s"
    rows = "".join(f"<li>{escape(s.server)}: {'up' if s.reachable else 'down'}</li>"
                   for s in snapshot.status.servers)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>markship "
            f"{escape(config.group.name)}</title></head><body><h1>{escape(config.group.name)}"
            f"</h1><p>RPO now: {escape(rpo)}</p><ul>{rows}</ul><p>taken at "
            f"{snapshot.taken_at.isoformat()}</p></body></html>")
