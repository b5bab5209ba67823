"""Small immutable records the repository hands out.

Tuple subclasses written out by hand instead of typing.NamedTuple: wal-push imports this
module once per WAL segment, and typing plus NamedTuple class creation were a visible share of
that start-up.
"""

from __future__ import annotations


class StoredObject(tuple[str, int, str]):
    """An object as written: its key, stored size and sha256 of the stored bytes."""

    __slots__ = ()

    def __new__(cls, key: str, size: int, sha256: str) -> StoredObject:
        return tuple.__new__(cls, (key, size, sha256))

    @property
    def key(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]

    @property
    def sha256(self) -> str:
        return self[2]

    def __repr__(self) -> str:
        return f"StoredObject(key={self[0]!r}, size={self[1]}, sha256={self[2]!r})"


class ObjectInfo(tuple[str, int, float]):
    """A listed object: key, stored size and modification time (epoch seconds)."""

    __slots__ = ()

    def __new__(cls, key: str, size: int, mtime: float) -> ObjectInfo:
        return tuple.__new__(cls, (key, size, mtime))

    @property
    def key(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]

    @property
    def mtime(self) -> float:
        return self[2]

    def __repr__(self) -> str:
        return f"ObjectInfo(key={self[0]!r}, size={self[1]}, mtime={self[2]})"


class TempObject(tuple[str, int, "bool | None"]):
    """A partly written object left behind by a writer; never taken as data.

    `writer_alive` is None when the writer ran on another host.
    """

    __slots__ = ()

    def __new__(cls, key: str, size: int, writer_alive: bool | None) -> TempObject:
        return tuple.__new__(cls, (key, size, writer_alive))

    @property
    def key(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]

    @property
    def writer_alive(self) -> bool | None:
        return self[2]

    def __repr__(self) -> str:
        return f"TempObject(key={self[0]!r}, size={self[1]}, writer_alive={self[2]})"
