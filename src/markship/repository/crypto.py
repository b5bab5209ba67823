"""Repository encryption with age (pyrage): streamed, never a whole object in memory.

Objects are compressed first, then encrypted, so a stored object is a standard age file:
`age -d -i IDENTITY FILE | zstd -d` reads it without markship. Writing needs only public
recipients (`age1…`); reading needs an identity (`AGE-SECRET-KEY-1…`), kept off production.

Key material never goes into logs, errors, JSON output or process arguments: errors name a
key by its fingerprint (the first 16 hex digits of the sha256 of its public recipient).
"""

from __future__ import annotations

import os

from markship.errors import ConfigError, CorruptObject, KeyProblem, MarkshipError, first_line

# wal-fetch loads this module for every WAL file recovery asks for: no pathlib, hashlib,
# typing, contextlib or threading at import time, and pyrage only once something is really
# encrypted or decrypted.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import BinaryIO

    from pyrage.x25519 import Identity, Recipient

    from markship.repository.base import Writable

AGE_MAGIC = b"age-encryption.org/v1\n"
CHUNK = 256 * 1024


def fingerprint(recipient: str) -> str:
    """A short, stable name for a key that reveals nothing of it."""
    import hashlib

    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def parse_recipient(text: str) -> Recipient:
    from pyrage import x25519

    try:
        return x25519.Recipient.from_str(text.strip())
    except Exception:  # pyrage raises its own RecipientError
        raise ConfigError("[encryption] recipient is not an age public key",
                          "use the age1… line printed by `markship key create`") from None


def read_identities(path: str | os.PathLike[str], what: str = "identity file",
                    fix_missing: str = "restore it, or run `markship key import` from the key "
                                       "export") -> list[Identity]:
    """Every identity in an identity file (one per line; # comments, blank lines allowed).

    Several lines make an identity list: after `markship key rotate` the old identity stays
    in the file so that objects written before the rotation stay readable. `what` names the
    file in errors (the catalog key file is one too).
    """
    text = read_key_file(path, what, fix_missing)
    return parse_identities(text, f"{what} {os.fspath(path)}")


def read_key_file(path: str | os.PathLike[str], what: str, fix_missing: str) -> str:
    """The text of a key file; a missing or unreadable one is a KeyProblem naming `what`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise KeyProblem(f"{what} {path} not found", fix_missing) from None
    except PermissionError:
        raise KeyProblem(f"{what} {path} is not readable by this user",
                        "run as the user that owns it (it must stay mode 0600)") from None


def parse_identities(text: str, source: str) -> list[Identity]:
    """The AGE-SECRET-KEY-1… lines of `text`; `source` names it in errors."""
    from pyrage import x25519

    identities: list[Identity] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(x25519.Identity.from_str(line))
        except Exception:
            raise KeyProblem(f"{source}, line {number}, is not an age identity",
                            "the file holds AGE-SECRET-KEY-1… lines; restore it from the "
                            "key export") from None
    if not identities:
        raise KeyProblem(f"{source} holds no identity",
                        "restore it from the key export (markship key import)")
    return identities


def identity_recipients(identities: Iterable[Identity]) -> list[str]:
    return [str(identity.to_public()) for identity in identities]


def is_encrypted(head: bytes) -> bool:
    return head.startswith(AGE_MAGIC)


class EncryptingWriter:
    """A writable stream: what is written goes, encrypted, to `out` (through a pipe read by
    pyrage in a thread, so memory stays flat). `close()` finishes the age file."""

    def __init__(self, out: Writable, recipients: list[Recipient]) -> None:
        import pyrage

        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(write_fd, "wb", buffering=CHUNK)
        self._error: BaseException | None = None
        source = os.fdopen(read_fd, "rb", buffering=CHUNK)

        def pump() -> None:
            try:
                with source:
                    # pyrage only calls read()/write(): any stream will do.
                    pyrage.encrypt_io(source, out, recipients)  # type: ignore[arg-type]
            except BaseException as exc:  # reported by close()
                self._error = exc

        import threading

        self._thread = threading.Thread(target=pump, name="age-encrypt", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview, /) -> int:
        try:
            self._pipe.write(data)
        except BrokenPipeError:
            self._thread.join()
            raise MarkshipError(f"encryption failed: {self._error}") from None
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self._pipe.closed:
            self._pipe.close()
        self._thread.join()
        if self._error is not None:
            raise MarkshipError(f"encryption failed: {self._error}")

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecryptingReader:
    """A readable stream of the plaintext of an age file read from `source`."""

    def __init__(self, source: BinaryIO, identities: list[Identity], what: str,
                 no_key: KeyProblem | None = None) -> None:
        """`no_key`: the error when none of `identities` opens the file (default: "encrypted
        for another key")."""
        import pyrage

        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(read_fd, "rb", buffering=CHUNK)
        self._error: BaseException | None = None
        self.what = what
        self.no_key = no_key
        self._source = source
        sink = os.fdopen(write_fd, "wb", buffering=CHUNK)

        def pump() -> None:
            try:
                pyrage.decrypt_io(source, sink, identities)  # type: ignore[arg-type]
            except BrokenPipeError:
                pass  # the reader stopped early
            except BaseException as exc:  # reported by read()
                self._error = exc
            finally:
                # The end of the pipe: read() sees EOF, then the error if any.
                try:  # noqa: SIM105 (contextlib would load on every wal-fetch)
                    sink.close()
                except BrokenPipeError:
                    pass

        import threading

        self._thread = threading.Thread(target=pump, name="age-decrypt", daemon=True)
        self._thread.start()

    def read(self, size: int = -1, /) -> bytes:
        data = self._pipe.read(size)
        if not data or (size > 0 and len(data) < size):
            self._thread.join()
            if self._error is not None:
                raise self._failure(self._error)
        return data

    def _failure(self, error: BaseException) -> MarkshipError:
        text = str(error)
        if "no matching keys" in text.lower() or "NoMatchingKeys" in text:
            if self.no_key is not None:
                return self.no_key
            return KeyProblem(f"{self.what} was encrypted for another key",
                             "use the identity file of the key this repository was written "
                             "with (markship key status shows its fingerprint)")
        return CorruptObject(f"{self.what} cannot be decrypted ({first_line(error)})",
                             "run markship verify; restore the object from another copy")

    def close(self) -> None:
        self._pipe.close()
        self._thread.join()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> DecryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
