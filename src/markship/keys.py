"""`markship key …`: create the repository key and report on it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from markship import crypto
from markship.config import Config
from markship.errors import KeyProblem, MarkshipError


@dataclass(frozen=True)
class CreatedKey:
    path: Path
    recipient: str
    fingerprint: str


def create_identity(path: Path) -> CreatedKey:
    """Write a new age identity to `path` (mode 0600; never over an existing file)."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise MarkshipError(f"{path} already exists; a key file is never overwritten",
                            "choose another path, or keep using the key in it") from None
    except OSError as exc:
        raise MarkshipError(f"cannot create {path} ({exc.strerror})",
                            "pick a writable directory") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# markship repository key, fingerprint {crypto.fingerprint(recipient)}\n"
                     f"# public recipient: {recipient}\n{identity}\n")
        handle.flush()
        os.fsync(handle.fileno())
    return CreatedKey(path, recipient, crypto.fingerprint(recipient))


@dataclass(frozen=True)
class KeyStatus:
    encrypted: bool
    fingerprint: str | None
    identity_file: str | None
    identity_ok: bool | None
    identity_mode_ok: bool | None
    problem: str | None


def key_status(config: Config) -> KeyStatus:
    encryption = config.encryption
    if encryption is None:
        return KeyStatus(False, None, None, None, None, "the repository is not encrypted")
    fingerprint = crypto.fingerprint(encryption.recipient)
    path = encryption.identity_file
    if path is None:
        return KeyStatus(True, fingerprint, None, None, None, None)
    try:
        identities = crypto.read_identities(path)
    except KeyProblem as exc:
        return KeyStatus(True, fingerprint, str(path), False, None, exc.one_line())
    recipients = crypto.identity_recipients(identities)
    ok = encryption.recipient in recipients
    mode_ok = path.stat().st_mode & 0o077 == 0
    problem = None
    if not ok:
        problem = (f"identity file {path} does not hold the key with fingerprint {fingerprint} "
                   f"(it holds {', '.join(crypto.fingerprint(r) for r in recipients)})")
    elif not mode_ok:
        problem = f"identity file {path} is readable by others: chmod 600 {path}"
    return KeyStatus(True, fingerprint, str(path), ok, mode_ok, problem)
