"""A file-system repository whose every object is an age file (see markship.crypto).

Writing needs only the recipients; reading needs the identity file, loaded on first read, so
commands that only write (wal-push, backups on a production host) work without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from markship import crypto
from markship.errors import CorruptObject, KeyProblem
from markship.repository.base import Readable, Writable
from markship.repository.fs import FsRepository, Staged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyrage.x25519 import Identity


class EncryptedFsRepository(FsRepository):
    def __init__(self, root: str | os.PathLike[str], recipients: list[str],
                 identity_file: Path | None) -> None:
        super().__init__(root)
        self.recipients = [crypto.parse_recipient(r) for r in recipients]
        self.identity_file = identity_file
        self._identities: list[Identity] | None = None

    def identities(self) -> list[Identity]:
        if self._identities is None:
            if self.identity_file is None:
                raise KeyProblem(
                    "reading this encrypted repository needs the identity, and the config "
                    "names no [encryption] identity_file",
                    "set identity_file where restores run (the DR site); production hosts "
                    "only write and need just the recipient")
            self._identities = crypto.read_identities(self.identity_file)
        return self._identities

    def stage(self, folder: str, fill: Callable[[Writable], None], *,
              hashed: bool = True) -> Staged:
        """Every write passes here (FsRepository.write_named_by stages first): encrypted."""
        def encrypt(sink: Writable) -> None:
            with crypto.EncryptingWriter(sink, self.recipients) as writer:
                fill(writer)

        return super().stage(folder, encrypt, hashed=hashed)

    def open(self, key: str) -> BinaryIO:
        raw = self.open_stored(key)
        head = raw.read(len(crypto.AGE_MAGIC))
        raw.seek(0)
        if not crypto.is_encrypted(head):
            raw.close()
            raise CorruptObject(f"object {key} is not encrypted, but encryption is on",
                                "it was not written through this repository's key: run "
                                "markship verify and remove or re-create it")
        identities = self.identities()
        return crypto.DecryptingReader(raw, identities, f"object {key}")  # type: ignore[return-value]

    def plaintext(self, stored: Readable, key: str) -> Readable:
        return crypto.DecryptingReader(stored, self.identities(), f"object {key}")  # type: ignore[arg-type]

    def read_bytes(self, key: str) -> bytes:
        chunks = []
        with self.open(key) as reader:
            while chunk := reader.read(crypto.CHUNK):
                chunks.append(chunk)
        return b"".join(chunks)
