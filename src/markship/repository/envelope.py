"""The checksummed envelope every repository record is stored in (markship.repository.records
reads and checks it): standard library only, so the lean path of `markship mark` writes its
record and journal entry in the very bytes the models would."""

from __future__ import annotations

import json
from hashlib import sha256 as sha256

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the lean path of `markship mark`
    from collections.abc import Callable

    from markship.repository.base import Repository, StagedObject, Writable

FORMAT = 1


def seal(kind: str, body: dict[str, object]) -> bytes:
    """A record as stored: `body` (the model's JSON form) in an envelope carrying its checksum;
    `kind`: the model's class name."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope = {"kind": kind, "format": FORMAT,
                "sha256": sha256(canonical).hexdigest(), "body": body}
    return json.dumps(envelope, indent=1, sort_keys=True).encode() + b"\n"


def write_sealed(repo: Repository, key: str, data: bytes, *, overwrite: bool = False) -> None:
    """Store a sealed record at `key` (create-only unless `overwrite`), flushed to disk."""
    repo.write_bytes(key, data, overwrite=overwrite, metadata=True)


def stage_sealed(repo: Repository, key: str, content: Callable[[], bytes]) -> StagedObject:
    """Store a sealed record under a temp name in `key`'s folder, flushed to disk;
    publish(lambda: name) names it. `content()` is called once the temp object is open: it
    may wait for the record to be known, or raise to give up (the temp object then goes)."""
    folder = key.rpartition("/")[0]
    return repo.stage(folder + "/" if folder else "", lambda sink: _write_all(sink, content()),
                      metadata=True)


def _write_all(sink: Writable, data: bytes) -> None:
    sink.write(data)
