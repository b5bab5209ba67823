"""Streaming sha256 helpers (stdlib only: used on the wal-push path)."""

from __future__ import annotations

import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.repository.base import Readable as _Readable


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
