"""A file set for the tests of `markship files`: a config with one file set and its tree, and
hand-made captures planted in the repository as if markship had stored them."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import zstandard

from markship.backup import filesets
from markship.pg.scratch import chown_to
from markship.repository import records
from markship.repository.fs import FsRepository
from markship.repository.records import ObjectRef
from markship.timefmt import utcnow
from tests.support.servers import OS_USER, write_offline_config


def portal_fileset(workdir: Path) -> tuple[Path, Path]:
    """A config with one file set (and an unreachable server, which the config requires),
    and the file set's tree: a nested directory, a 0600 file, links and an excluded file."""
    tree = workdir / "host" / "etc" / "portal"
    (tree / "conf.d" / "sites").mkdir(parents=True)
    (tree / "portal.conf").write_text("listen 8080\n")
    (tree / "conf.d" / "sites" / "shop.conf").write_text("server_name shop.example\n")
    secret = tree / "conf.d" / "tls.key"
    secret.write_bytes(os.urandom(3000))
    secret.chmod(0o600)
    chown_to(tree / "portal.conf", OS_USER)  # restored as root, owners come back
    (tree / "current").symlink_to("conf.d/sites/shop.conf")
    (tree / "hostname").symlink_to("/etc/hostname")  # absolute: made relative inside the target
    (tree / "portal.conf.bak").write_text("old\n")
    (tree / "conf.d" / "cache").mkdir()
    (tree / "conf.d" / "cache" / "blob").write_text("excluded with its directory\n")
    config = workdir / "markship.toml"
    write_offline_config(config, workdir / "repo", extra=(
        f'\n[[fileset]]\nname = "portal"\npaths = ["{tree}"]\n'
        'exclude = ["*.bak", "conf.d/cache"]\n'))
    return config, tree


def give_to_postgres(path: Path) -> None:
    """`path` and everything below it owned by the postgres user (when we are root)."""
    for entry in [path, *path.rglob("*")]:
        chown_to(entry, OS_USER)


def plant_capture(workdir: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> str:
    """Store a hand-made archive with a record pointing at it, as if markship had captured
    it; returns the capture id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    packed = zstandard.ZstdCompressor().compress(raw.getvalue())
    repo = FsRepository(workdir / "repo")
    capture_id = filesets.capture_id_at(utcnow())
    stored = repo.write_bytes(f"filesets/portal/{capture_id}.tar.zst", packed)
    records.write_record(repo, filesets.record_key("portal", capture_id), filesets.FilesetRecord(
        name="portal", id=capture_id, created_at=utcnow(), reason="manual", host="elsewhere",
        roots=["/etc/portal"], content_sha256="0" * 64,
        archive=ObjectRef(key=stored.key, size=stored.size, sha256=stored.sha256),
        files=1, dirs=0, links=0, total_bytes=5))
    give_to_postgres(workdir / "repo")
    return capture_id
