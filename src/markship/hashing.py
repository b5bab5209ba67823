"""Streaming sha256 helpers (stdlib only: used on the wal-push path)."""

from __future__ import annotations

import hashlib
from typing import Protocol


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class HashingReader:
    """Passes reads through while computing the sha256 and size of what went by."""

    def __init__(self, inner: _Readable) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.inner.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
