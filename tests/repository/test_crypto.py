"""An encrypted repository: every object is an age file, readable by the standard tools."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from pathlib import Path

import blake3

from markship.pg.scratch import chown_to
from markship.repository import layout
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, OS_USER, GroupFactory, run_markship


def _create_key(workdir: Path, name: str, config: Path | None = None) -> tuple[Path, str]:
    path = workdir / name
    proc = run_markship(config, "key", "create", "--identity-file", str(path))
    assert proc.returncode == 0, proc.stderr
    recipient = next(line.split('"')[1] for line in proc.stdout.splitlines()
                     if line.startswith("recipient"))
    chown_to(path, OS_USER)
    return path, recipient


def test_key_create_is_private_and_never_overwrites(workdir: Path) -> None:
    path, recipient = _create_key(workdir, "key.txt")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert recipient.startswith("age1")
    assert "AGE-SECRET-KEY-" not in run_markship(None, "key", "create", "--identity-file",
                                                 str(workdir / "other.txt")).stdout
    again = run_markship(None, "key", "create", "--identity-file", str(path))
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert "Traceback" not in again.stderr


@ON_FS_AND_S3
def test_encrypted_backup_wal_and_marks_round_trip(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    identity, recipient = _create_key(group.workdir, "repo-key.txt")
    plain_config = group.config_path.read_text()
    group.config_path.write_text(plain_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                                 f'identity_file = "{identity}"\n')
    alpha.psql("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
    group.ok("backup")
    alpha.psql("INSERT INTO notes VALUES (2)")
    mark = json.loads(group.ok("mark", "--json"))["name"]
    alpha.psql("INSERT INTO notes VALUES (3)")
    group.ok("mark")  # the first mark's segment is archived behind it

    objects = [k for k in group.store.stored_keys() if k.split("/")[0] not in ("locks", "stream")]
    assert any(k.startswith("wal/") for k in objects)
    assert any(k.startswith("marks/") for k in objects)
    for key in objects:
        assert group.store.read(key).startswith(b"age-encryption.org/v1\n"), key

    # A WAL segment opens with `age -d` + `zstd -d`, byte for byte the archived file: its
    # BLAKE3 is the one the object's name carries (computed from the original at push time).
    segment = next(k for k in objects if k.startswith("wal/alpha/0000")
                   and k.rsplit("/", 1)[1][24] == "-")
    age = subprocess.run(["age", "-d", "-i", str(identity)], input=group.store.read(segment),
                         capture_output=True, check=True)
    raw = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True,
                         check=True).stdout
    assert len(raw) == 16 << 20
    digest = segment.rsplit("/", 1)[1].split("-")[1].removesuffix(".zst")
    assert "b3." + blake3.blake3(raw).hexdigest() == digest

    restored = group.restore("alpha", "--name", mark)
    assert restored.psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1,2}"

    # Another key: a clear error naming the problem, no traceback, nothing restored.
    other, _ = _create_key(group.workdir, "other-key.txt")
    group.config_path.write_text(plain_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                                 f'identity_file = "{other}"\n')
    wrong = group.markship("list")
    assert wrong.returncode != 0 and "encrypted for another key" in wrong.stderr
    assert "Traceback" not in wrong.stderr and wrong.stderr.count("\n") == 1
    status = group.markship("key", "status")
    assert status.returncode != 0 and "does not hold the key with fingerprint" in status.stderr

    # A missing identity file, where reading is needed: one line naming it.
    group.config_path.write_text(plain_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                                 f'identity_file = "{group.workdir}/gone.txt"\n')
    missing = group.markship("marks")
    assert missing.returncode != 0 and "gone.txt not found" in missing.stderr
    assert missing.stderr.count("\n") == 1
    # An object that is not encrypted where encryption is on is never read: a planted record
    # is named and skipped (the other marks stay listed), and verify fails on it.
    group.config_path.write_text(plain_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                                 f'identity_file = "{identity}"\n')
    planted = layout.mark_key(mark)
    saved = group.store.read(planted)
    group.store.write(planted, b'{"not": "encrypted"}\n')
    refused = group.markship("marks", "--json")
    assert "is not encrypted, but encryption is on; it was skipped" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    listed = [m["name"] for m in json.loads(refused.stdout)]
    assert mark not in listed and len(listed) == 1, listed
    assert group.markship("verify").returncode != 0
    group.store.write(planted, saved)

    # No [encryption] at all: the objects are recognised as encrypted.
    group.config_path.write_text(plain_config)
    plain = group.markship("list")
    assert plain.returncode != 0 and "encrypted, but the config has no [encryption]" in plain.stderr


def test_key_export_import_and_rotation(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    identity, recipient = _create_key(group.workdir, "repo-key.txt")
    base_config = group.config_path.read_text()

    def use(recipient_: str) -> None:
        group.config_path.write_text(base_config + f'\n[encryption]\nrecipient = "{recipient_}"'
                                     f'\nidentity_file = "{identity}"\n')

    use(recipient)
    alpha.psql("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
    backup = group.markship("backup")
    assert backup.returncode == 0 and "has no recorded backup" in backup.stderr
    assert "AGE-SECRET-KEY" not in backup.stderr + backup.stdout
    scripted = group.markship("backup", "--json")  # scripts' logs get the warning too
    assert scripted.returncode == 0 and "has no recorded backup" in scripted.stderr
    assert json.loads(scripted.stdout)["set"]["status"] == "done"

    passphrase = group.workdir / "passphrase"
    passphrase.write_text("correct horse battery\n")
    export = group.workdir / "key-export.age"
    group.ok("key", "export", "--to", str(export), "--hint", "the stable horse",
             "--passphrase-file", str(passphrase))
    assert export.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt")
    assert "the stable horse" in (group.workdir / "key-export.age.hint").read_text()
    status = json.loads(group.ok("key", "status", "--json"))
    assert status["backup_recorded_at"] and status["identity_ok"]
    assert "AGE-SECRET-KEY" not in json.dumps(status)
    assert "has no recorded backup" not in group.markship("status").stderr

    # The DR site has lost the identity: wrong passphrase first, then the right one.
    identity.unlink()
    wrong = group.workdir / "wrong"
    wrong.write_text("not the passphrase\n")
    failed = group.markship("key", "import", "--from", str(export), "--passphrase-file",
                            str(wrong))
    assert failed.returncode != 0 and "wrong passphrase" in failed.stderr
    assert "hint: the stable horse" in failed.stderr and not identity.exists()
    group.ok("key", "import", "--from", str(export), "--passphrase-file", str(passphrase))
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    mark = json.loads(group.ok("mark", "--json"))["name"]
    group.ok("mark")

    # An export of another key is refused by fingerprint.
    other, _ = _create_key(group.workdir, "other-key.txt", group.config_path)
    other_export = group.workdir / "other-export.age"
    group.ok("key", "export", "--to", str(other_export), "--hint", "h", "--identity-file",
             str(other), "--passphrase-file", str(passphrase))
    mismatch = group.markship("key", "import", "--from", str(other_export), "--identity-file",
                              str(group.workdir / "imported.txt"), "--passphrase-file",
                              str(passphrase))
    assert mismatch.returncode != 0 and "fingerprint" in mismatch.stderr
    assert not (group.workdir / "imported.txt").exists()

    # Rotation: new objects use the new key, old ones still open from the identity list.
    rotated = group.ok("key", "rotate")
    new_recipient = next(line.split('"')[1] for line in rotated.splitlines()
                         if "recipient =" in line)
    assert new_recipient != recipient
    use(new_recipient)
    alpha.psql("INSERT INTO notes VALUES (2)")
    group.ok("backup")
    restored_old = group.restore("alpha", "--name", mark)
    assert restored_old.psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1}"
    restored_new = group.restore("alpha", "--latest")
    assert restored_new.psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1,2}"

    # The written record: every key change, with fingerprints and never key material.
    entries = json.loads(group.ok("journal", "--json"))
    keyed = [e["command"] for e in entries if e["command"].startswith("key ")]
    assert keyed == ["key export", "key import", "key import", "key create", "key export",
                     "key import", "key rotate"], keyed
    assert [e["outcome"].split(":")[0] for e in entries if e["command"] == "key import"] == [
        "failed", "ok", "failed"]
    (created,) = [e for e in entries if e["command"] == "key create"]
    assert created["objects"]["fingerprint"] in other.read_text().splitlines()[0]
    assert "AGE-SECRET-KEY" not in json.dumps(entries)


def test_production_reads_the_catalog_with_its_key_but_never_a_backup(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    identity, recipient = _create_key(group.workdir, "repo-key.txt")
    catalog_key = group.workdir / "catalog-key.txt"
    base_config = group.config_path.read_text()
    # Production: the recipient and the catalog key, never the identity.
    group.config_path.write_text(base_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                                 f'catalog_key_file = "{catalog_key}"\n')
    # The DR site: the identity, no catalog key file.
    dr_config = group.workdir / "dr.toml"
    dr_config.write_text(base_config + f'\n[encryption]\nrecipient = "{recipient}"\n'
                         f'identity_file = "{identity}"\n')

    created = group.markship("key", "catalog", "--to", str(catalog_key))
    assert created.returncode == 0 and "new catalog key" in created.stdout, created.stderr
    assert stat.S_IMODE(catalog_key.stat().st_mode) == 0o600
    assert "AGE-SECRET-KEY" not in created.stdout + created.stderr

    alpha.psql("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
    for command in (["backup"], ["mark", "--json"], ["status"], ["list"], ["marks"],
                    ["journal"], ["expire"], ["key", "status"]):
        proc = group.markship(*command)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "not recorded in the journal" not in proc.stderr, (command, proc.stderr)
    assert f"catalog key {catalog_key.read_text().split()[5].rstrip(':')}" in \
        group.ok("key", "status")

    # The agent checks schedules and journals on production: nothing it needs is closed to it.
    group.add_config("\n[marks]\ninterval = 1\n")
    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(5)
    agent.send_signal(signal.SIGTERM)
    _out, log = agent.communicate(timeout=120)
    assert agent.returncode == 0, log
    assert " mark.ok " in log and " error " not in log and "journal.failed" not in log, log

    # Reading a backup or WAL needs the identity: one line saying so, nothing restored.
    target = group.workdir / "restore-here"
    refused = group.markship("restore", "--server", "alpha", "--target-dir", str(target),
                             "--latest")
    assert refused.returncode != 0 and "opens only with the repository identity" in \
        refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    assert not target.exists() or not any(target.iterdir())

    # With the standard age tool: the catalog key opens a mark record, not a WAL segment.
    mark_record = next((group.repo / "marks").glob("ms-*.json"))
    assert subprocess.run(["age", "-d", "-i", str(catalog_key), str(mark_record)],
                          capture_output=True).returncode == 0
    segment = next(p for p in (group.repo / "wal" / "alpha").rglob("0000*.zst")
                   if p.name[24] == "-")  # a segment, not a .backup file (a catalog fact)
    assert subprocess.run(["age", "-d", "-i", str(catalog_key), str(segment)],
                          capture_output=True).returncode != 0

    # The DR site writes records production can read (it finds the catalog key in the
    # repository with the identity), and restores.
    dr_mark = run_markship(dr_config, "mark", "--json")
    assert dr_mark.returncode == 0, dr_mark.stderr
    name = json.loads(dr_mark.stdout)["name"]
    assert name in {m["name"] for m in json.loads(group.ok("marks", "--json"))}
    assert json.loads(group.ok("journal", "verify", "--json"))["ok"]
    restored = group.restored("alpha")
    proc = run_markship(dr_config, "restore", "--server", "alpha", "--target-dir",
                        str(restored.data_dir), "--start", "--port", str(restored.port),
                        "--setting", f"unix_socket_directories={restored.base_dir}", "--name",
                        name)
    assert proc.returncode == 0, proc.stderr
    assert restored.psql("SELECT array_agg(id) FROM notes") == "{1}"
    # ... and gives a lost catalog key file back.
    again = group.workdir / "catalog-again.txt"
    recovered = run_markship(dr_config, "key", "catalog", "--to", str(again))
    assert recovered.returncode == 0 and "the group's catalog key" in recovered.stdout
    assert (again.read_text().splitlines()[-1] == catalog_key.read_text().splitlines()[-1])

    # Production without its catalog key file: one line naming it and the fix.
    catalog_key.unlink()
    lost = group.markship("status")
    assert lost.returncode != 0 and f"catalog key file {catalog_key} not found" in lost.stderr
    assert "markship key catalog" in lost.stderr and lost.stderr.count("\n") == 1
    # ... but archiving never stops over it: a .backup file is stored for the identity alone.
    label = group.workdir / "000000010000000000000099.00000028.backup"
    label.write_text("START WAL LOCATION: 0/99000028 (file 000000010000000000000099)\n")
    chown_to(label, OS_USER)
    pushed = group.markship("wal-push", "--server", "alpha", str(label), user=OS_USER)
    assert pushed.returncode == 0 and "written for the repository key only" in pushed.stderr
    # A DR config copied from production names the lost file too: the identity finds the
    # group's catalog key in the repository, and records stay readable with the key.
    dr_config.write_text(dr_config.read_text() + f'catalog_key_file = "{catalog_key}"\n')
    late = run_markship(dr_config, "mark", "--json")
    assert late.returncode == 0, late.stderr
    late_record = group.repo / "marks" / f"{json.loads(late.stdout)['name']}.json"
    assert subprocess.run(["age", "-d", "-i", str(again), str(late_record)],
                          capture_output=True).returncode == 0
