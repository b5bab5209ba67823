"""`markship key …`: create the repository key and report on it."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from markship.config.model import Config
from markship.errors import KeyProblem, MarkshipError
from markship.repository import crypto, layout, records
from markship.repository.base import Repository
from markship.repository.records import Record
from markship.timefmt import show, utcnow

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.repository.encrypted import Encrypted


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
    _write_private(path, (f"# markship repository key, fingerprint "
                          f"{crypto.fingerprint(recipient)}\n# public recipient: {recipient}\n"
                          f"{identity}\n").encode())
    return CreatedKey(path, recipient, crypto.fingerprint(recipient))


def catalog_key_file(repo: Encrypted, target: Path,
                     owner: str | None = None) -> tuple[CreatedKey, bool]:
    """Write the group's catalog key to `target` (0600, never over an existing file; owned by
    `owner` when run as root): the repository's copy when it has one (opened with the
    identity), else a new key. Returns the key and whether it is new; a new key still has to
    be stored in the repository (repo.store_catalog_key, as the repository's OS user)."""
    from pyrage import x25519

    try:
        stored = repo.stored_catalog_keys()
    except KeyProblem as exc:
        raise KeyProblem(f"this group already has a catalog key; its copy in the repository "
                         f"opens only with the identity ({exc.message})",
                         "run this where the identity file is, or copy the catalog key file "
                         "from a production host") from None
    created = not stored
    identities = stored or [x25519.Identity.generate()]
    recipient = str(identities[0].to_public())
    lines = [f"# markship catalog key, fingerprint {crypto.fingerprint(recipient)}: opens the "
             "catalog records, never backups", f"# public recipient: {recipient}"]
    _write_private(target, ("\n".join(lines + [str(i) for i in identities]) + "\n").encode())
    _give_to(target, owner)
    return CreatedKey(target, recipient, crypto.fingerprint(recipient)), created


@dataclass(frozen=True)
class KeyStatus:
    encrypted: bool
    fingerprint: str | None
    identity_file: str | None
    identity_ok: bool | None
    identity_mode_ok: bool | None
    backup_recorded_at: datetime | None
    problem: str | None
    catalog_fingerprint: str | None = None  # the catalog key new records are encrypted to
    catalog_key_file: str | None = None


def key_status(config: Config, repo: Repository) -> KeyStatus:
    from dataclasses import replace

    from markship.repository.encrypted import Encrypted

    status = _master_status(config, repo)
    encryption = config.encryption
    if encryption is None or not isinstance(repo, Encrypted):
        return status
    path = encryption.catalog_key_file
    try:
        catalog = repo.catalog_identities()
    except KeyProblem as exc:
        return replace(status, catalog_key_file=str(path) if path else None,
                       problem=status.problem or exc.one_line())
    fingerprint = (crypto.fingerprint(str(catalog[0].to_public())) if catalog else None)
    problem = status.problem
    if path is not None and path.exists() and path.stat().st_mode & 0o077:
        problem = problem or f"catalog key file {path} is readable by others: chmod 600 {path}"
    return replace(status, catalog_fingerprint=fingerprint,
                   catalog_key_file=str(path) if path else None, problem=problem)


def _master_status(config: Config, repo: Repository) -> KeyStatus:
    encryption = config.encryption
    if encryption is None:
        return KeyStatus(False, None, None, None, None, None, "the repository is not encrypted")
    fingerprint = crypto.fingerprint(encryption.recipient)
    backed_up = [r.created_at for r in exports(repo) if fingerprint in r.fingerprints]
    recorded = backed_up[-1] if backed_up else None
    path = encryption.identity_file
    if path is None:
        return KeyStatus(True, fingerprint, None, None, None, recorded, None)
    try:
        identities = crypto.read_identities(path)
    except KeyProblem as exc:
        return KeyStatus(True, fingerprint, str(path), False, None, recorded, exc.one_line())
    recipients = crypto.identity_recipients(identities)
    ok = encryption.recipient in recipients
    mode_ok = path.stat().st_mode & 0o077 == 0
    problem = None
    if not ok:
        problem = (f"identity file {path} does not hold the key with fingerprint {fingerprint} "
                   f"(it holds {', '.join(crypto.fingerprint(r) for r in recipients)})")
    elif not mode_ok:
        problem = f"identity file {path} is readable by others: chmod 600 {path}"
    return KeyStatus(True, fingerprint, str(path), ok, mode_ok, recorded, problem)


# -- key backups: a passphrase-protected export, with a hint beside it ---------------------------

class KeyExportRecord(Record):
    """That a backup of the key exists (fingerprints only: never key material, never the hint)."""

    fingerprints: list[str]
    created_at: datetime
    host: str


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise MarkshipError(f"{path} already exists and is never overwritten",
                            "choose another path") from None
    except OSError as exc:
        raise MarkshipError(f"cannot create {path} ({exc.strerror})",
                            "pick a writable directory") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _give_to(path: Path, owner: str | None) -> None:
    """When run as root, hand a key file to `owner`: markship reads it as the repository user."""
    if owner is not None and os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(owner)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def hint_path(export: Path) -> Path:
    return export.with_name(export.name + ".hint")


def export_key(repo: Repository, identity_file: Path, target: Path, passphrase: str,
               hint: str) -> KeyExportRecord:
    """Write `target` (the identity file encrypted with the passphrase, an age scrypt file) and
    `target.hint` (the hint, in clear), and record the export in the repository."""
    from pyrage import passphrase as age_passphrase

    identities = crypto.read_identities(identity_file)
    if len(passphrase) < 8:
        raise MarkshipError("the passphrase is shorter than 8 characters",
                            "choose a longer one: it is all that protects the key export")
    if passphrase in hint:
        raise MarkshipError("the hint contains the passphrase", "write a hint, not the answer")
    fingerprints = [crypto.fingerprint(r) for r in crypto.identity_recipients(identities)]
    sealed = age_passphrase.encrypt(identity_file.read_bytes(), passphrase)
    _write_private(target, sealed)
    now = utcnow()
    _write_private(hint_path(target), (
        f"markship key export of {show(now)}\n"
        f"key fingerprint(s): {', '.join(fingerprints)}\n"
        f"passphrase hint: {hint}\n"
        "restore with: markship key import --from " + target.name + "\n").encode(), 0o644)
    record = KeyExportRecord(fingerprints=fingerprints, created_at=now, host=socket.gethostname())
    records.write_record(repo, layout.key_export_key(now.strftime('%Y%m%dT%H%M%S.%fZ')), record)
    return record


def read_hint(export: Path) -> str | None:
    try:
        for line in hint_path(export).read_text().splitlines():
            if line.startswith("passphrase hint: "):
                return line.removeprefix("passphrase hint: ")
    except OSError:
        return None
    return None


def import_key(repo_recipient: str | None, export: Path, passphrase: str,
               target: Path, owner: str | None = None) -> list[str]:
    """Open an export with its passphrase and write the identity file `target` (0600, never
    over an existing file; owned by `owner` when run as root). The key must be the
    repository's: its fingerprint is checked against the configured recipient. Returns the
    fingerprints written."""
    from pyrage import DecryptError
    from pyrage import passphrase as age_passphrase

    try:
        sealed = export.read_bytes()
    except OSError as exc:
        raise MarkshipError(f"cannot read the key export {export} ({exc.strerror})",
                            "give the path of the file `markship key export` wrote") from None
    if not crypto.is_encrypted(sealed):
        raise MarkshipError(f"{export} is not a markship key export (not an age file)",
                            "give the path of the file `markship key export` wrote")
    try:
        plain = age_passphrase.decrypt(sealed, passphrase)
    except DecryptError:
        raise KeyProblem(f"wrong passphrase for the key export {export}",
                         "try again; the hint is in " + hint_path(export).name) from None
    staging = target.with_name(f".{target.name}.import-{os.getpid()}")
    _write_private(staging, plain)
    _give_to(staging, owner)
    try:
        recipients = crypto.identity_recipients(crypto.read_identities(staging))
        fingerprints = [crypto.fingerprint(r) for r in recipients]
        if repo_recipient is not None and repo_recipient not in recipients:
            raise KeyProblem(
                f"the key in {export} has fingerprint {', '.join(fingerprints)}, but this "
                f"repository's key has fingerprint {crypto.fingerprint(repo_recipient)}",
                "import the export of this repository's key")
        try:
            os.link(staging, target)
        except FileExistsError:
            raise MarkshipError(f"{target} already exists and is never overwritten",
                                "move it away first, or import to another --identity-file"
                                ) from None
    finally:
        staging.unlink(missing_ok=True)
    return fingerprints


def exports(repo: Repository) -> list[KeyExportRecord]:
    """The recorded key exports; a damaged record is reported and left out (the key then
    counts as not backed up: the safe side)."""
    found = records.read_folder(repo, layout.KEY_EXPORTS, KeyExportRecord)
    return sorted(found, key=lambda r: r.created_at)


def backup_warning(config: Config, repo: Repository) -> str | None:
    """The warning markship repeats while the repository key has no recorded backup."""
    if config.encryption is None:
        return None
    current = crypto.fingerprint(config.encryption.recipient)
    try:
        recorded = any(current in r.fingerprints for r in exports(repo))
    except MarkshipError:
        return None
    if recorded:
        return None
    return (f"the repository key {current} has no recorded backup: lose it and every backup is "
            "unreadable; run `markship key export --to FILE` and keep FILE off this host")


def rotate(identity_file: Path) -> CreatedKey:
    """A new key first in the identity file, the old ones kept below it (so older objects
    stay readable). The new recipient must go into the config."""
    from pyrage import x25519

    old = identity_file.read_text()
    crypto.read_identities(identity_file)  # refuse to rotate a broken file
    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = (f"# markship repository key, fingerprint {crypto.fingerprint(recipient)} "
            f"(rotated in {show(utcnow())})\n# public recipient: {recipient}\n{identity}\n"
            + old)
    staging = identity_file.with_name(f".{identity_file.name}.rotate-{os.getpid()}")
    _write_private(staging, text.encode())
    owner = identity_file.stat()
    if os.geteuid() == 0:  # keep the file readable by the user markship reads it as
        os.chown(staging, owner.st_uid, owner.st_gid)
    os.replace(staging, identity_file)
    return CreatedKey(identity_file, recipient, crypto.fingerprint(recipient))
