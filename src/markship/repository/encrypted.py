"""Repositories whose every object is an age file (see markship.repository.crypto): the
`Encrypted` layer over a backend's storage (a directory or S3-compatible object storage).

Two keys open it:

- the repository key (`recipient`, read with `identity_file`) opens every object; its
  identity is kept where restores run (the DR site), never on production hosts;
- the *catalog key* (`catalog_key_file`, an age identity too) opens the catalog only: backup
  set, mark, journal, file set and dump records, never backups, WAL, file contents or dumps.
  Production hosts hold it, so status, list, marks, the journal, expiry and the agent's
  schedule checks work there, while a compromised production host still cannot read a backup.

Records are encrypted to both keys, data to the repository key alone. A copy of the catalog
key is kept in the repository (`keys/catalog/`), encrypted to the repository key, so a host
holding the identity finds it (and keeps writing records production can read) without the
file; `markship key catalog --to FILE` writes the file from it.
"""

from __future__ import annotations

import os

from markship.errors import ConflictError, CorruptObject, KeyProblem
from markship.repository import crypto, layout
from markship.repository.fs import FsRepository

# wal-fetch opens this backend once per WAL file recovery asks for: no pathlib or typing
# here, and pyrage loads only when an object is encrypted or decrypted.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from pyrage.x25519 import Identity, Recipient

    from markship.repository.base import Readable, Writable
    from markship.repository.objects import StoredObject

    KeyPath = str | os.PathLike[str]

CATALOG_FILE_FIX = ("copy it from another host of the group, or run `markship key catalog "
                    "--to FILE` where the identity file is")


class Encrypted:
    """Encryption for a backend: mixed in before the backend class, whose writes pass their
    bytes through `_encoded` and whose reads come from `open_stored`."""

    if TYPE_CHECKING:  # what the backend provides (FsRepository, S3Repository)
        def children(self, prefix: str) -> list[str]: ...

        def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False,
                        metadata: bool = False) -> StoredObject: ...

        def open_stored(self, key: str) -> BinaryIO: ...

    def _keys(self, recipients: list[str], identity_file: KeyPath | None,
              catalog_key_file: KeyPath | None, strict_catalog: bool) -> None:
        self._recipient_texts = recipients
        self._recipients: list[Recipient] | None = None
        self.identity_file = identity_file
        self.catalog_key_file = catalog_key_file
        self._identities: list[Identity] | None = None
        self._catalog: list[Identity] | None = None
        self._catalog_from_file: list[Identity] | None = None
        self._catalog_text: str | None = None  # catalog_key_file as read, until copied

        # False where failing would be worse than a record production cannot read: the
        # archive_command (WAL .backup/.history files).
        self.strict_catalog = strict_catalog

    # -- keys ----------------------------------------------------------------------------------

    @property
    def recipients(self) -> list[Recipient]:
        """The repository key's recipients (parsed on first use: a WAL lookup needs none)."""
        if self._recipients is None:
            self._recipients = [crypto.parse_recipient(r) for r in self._recipient_texts]
        return self._recipients

    def identities(self) -> list[Identity]:
        """The repository key's identities (identity_file): they open every object."""
        if self._identities is None:
            if self.identity_file is None:
                raise KeyProblem(
                    "reading this object needs the repository identity, and the config "
                    "names no [encryption] identity_file",
                    "set identity_file where restores run (the DR site); production hosts "
                    "read the catalog with [encryption] catalog_key_file")
            self._identities = crypto.read_identities(self.identity_file)
        return self._identities

    def _catalog_file(self) -> list[Identity]:
        """The identities of catalog_key_file ([] when none is configured)."""
        if self._catalog_from_file is None:
            if self.catalog_key_file is None:
                self._catalog_from_file = []
            else:
                self._catalog_text = crypto.read_key_file(
                    self.catalog_key_file, "catalog key file", CATALOG_FILE_FIX)
                self._catalog_from_file = crypto.parse_identities(
                    self._catalog_text, f"catalog key file {os.fspath(self.catalog_key_file)}")
        return self._catalog_from_file

    def catalog_identities(self) -> list[Identity]:
        """The catalog key for new records (newest first): from catalog_key_file, else from
        the repository's copy opened with the identity; [] when the group has none. Raises
        when the group has one and this host cannot get it: records written without it would
        be unreadable on the hosts that read with it."""
        if self._catalog is None:
            problem: KeyProblem | None = None
            try:
                found = self._catalog_file()
            except KeyProblem as exc:
                found, problem = [], exc
            if not found:  # the DR site: the repository's copy, with the identity
                try:
                    found = self.stored_catalog_keys()
                except KeyProblem:
                    raise problem or KeyProblem(
                        "this repository's records are also encrypted to a catalog key, "
                        "and the config names no [encryption] catalog_key_file",
                        "set catalog_key_file on this host: " + CATALOG_FILE_FIX) from None
            if not found and problem is not None:
                raise problem
            self._catalog = found
        return self._catalog

    def stored_catalog_keys(self) -> list[Identity]:
        """The catalog keys kept in the repository, newest first (needs the identity)."""
        found: list[Identity] = []
        names = sorted(self.children(layout.CATALOG_KEY_COPIES), reverse=True)
        if not names:
            return found
        self.identities()  # the copies open with it alone: say so when it is not here
        for name in names:
            key = layout.CATALOG_KEY_COPIES + name
            found.extend(crypto.parse_identities(self.read_bytes(key).decode(), f"object {key}"))
        return found

    def store_catalog_key(self, text: str) -> None:
        """Keep a copy of a catalog key file in the repository (encrypted to the repository
        key only), once per key: named by UTC time and the key's fingerprint."""
        from markship.timefmt import utcnow

        first = crypto.parse_identities(text, "the catalog key")[0]
        fingerprint = crypto.fingerprint(str(first.to_public()))
        every_copy = layout.catalog_key_copy_name("", fingerprint)
        if any(n.endswith(every_copy) for n in self.children(layout.CATALOG_KEY_COPIES)):
            return
        name = layout.catalog_key_copy_name(utcnow().strftime("%Y%m%dT%H%M%S.%fZ"), fingerprint)
        try:  # noqa: SIM105 (contextlib would load on every wal-fetch)
            self.write_bytes(layout.CATALOG_KEY_COPIES + name, text.encode())
        except ConflictError:
            pass  # another writer stored it at this instant

    def _reading_identities(self) -> tuple[list[Identity], KeyProblem | None]:
        """Every identity at hand, and why the repository identity is not (if it is not)."""
        missing: KeyProblem | None = None
        try:
            found = list(self.identities())
        except KeyProblem as exc:
            found, missing = [], exc
        try:
            found = self._catalog_file() + found
        except KeyProblem:
            if not found:
                raise
        if not found:
            assert missing is not None
            raise missing
        return found, missing

    def _open_with_keys(self, stored: Readable, key: str) -> crypto.DecryptingReader:
        identities, missing = self._reading_identities()
        no_key = None
        if missing is not None:  # the catalog key alone: it opens records, never data
            no_key = KeyProblem(f"object {key} opens only with the repository identity: "
                                f"{missing.message}",
                                "read backups, WAL, file sets and dumps where the identity "
                                "file is (the DR site)")
        return crypto.DecryptingReader(stored, identities, f"object {key}",  # type: ignore[arg-type]
                                       no_key)

    def _metadata_recipients(self) -> list[Recipient]:
        try:
            catalog = self.catalog_identities()
        except KeyProblem as exc:
            if self.strict_catalog:
                raise
            # The archiver's path: archiving must never stop over the catalog key. The
            # record is readable with the identity; production cannot read this one.
            import sys

            print(f"markship: warning: {exc.one_line()} (written for the repository key only)",
                  file=sys.stderr)
            return self.recipients
        if not catalog:
            return self.recipients
        if self._catalog_text is not None:  # read from catalog_key_file: keep a copy
            self.store_catalog_key(self._catalog_text)
            self._catalog_text = None
        return [*self.recipients, catalog[0].to_public()]

    # -- objects -------------------------------------------------------------------------------

    def _encoded(self, fill: Callable[[Writable], None], metadata: bool
                 ) -> Callable[[Writable], None]:
        """Every write's bytes pass here: encrypted, to the catalog key as well when the
        object is a record."""
        recipients = self._metadata_recipients() if metadata else self.recipients

        def encrypt(sink: Writable) -> None:
            with crypto.EncryptingWriter(sink, recipients) as writer:
                fill(writer)

        return encrypt

    def open(self, key: str) -> BinaryIO:
        raw = self.open_stored(key)
        # Both backends hand out buffered readers: the first bytes are looked at in place.
        head = raw.peek(len(crypto.AGE_MAGIC))[:len(crypto.AGE_MAGIC)]  # type: ignore[attr-defined]
        if not crypto.is_encrypted(head):
            raw.close()
            raise CorruptObject(f"object {key} is not encrypted, but encryption is on",
                                "it was not written through this repository's key: run "
                                "markship verify and remove or re-create it")
        try:
            return self._open_with_keys(raw, key)  # type: ignore[return-value]
        except BaseException:
            raw.close()
            raise

    def plaintext(self, stored: Readable, key: str) -> Readable:
        return self._open_with_keys(stored, key)

    def read_bytes(self, key: str) -> bytes:
        chunks = []
        with self.open(key) as reader:
            while chunk := reader.read(crypto.CHUNK):
                chunks.append(chunk)
        return b"".join(chunks)


class EncryptedFsRepository(Encrypted, FsRepository):
    """An encrypted repository in a local or mounted directory."""

    def __init__(self, root: str | os.PathLike[str], recipients: list[str],
                 identity_file: KeyPath | None, catalog_key_file: KeyPath | None = None, *,
                 strict_catalog: bool = True, make_root: bool = True) -> None:
        FsRepository.__init__(self, root, make_root)
        self._keys(recipients, identity_file, catalog_key_file, strict_catalog)

