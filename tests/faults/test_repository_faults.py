"""Repository faults under a real archiving server (issue #12): disk full, read-only, one folder
without permission, I/O errors, slow storage.

The repository is a small tmpfs mounted for the test. I/O errors and latency come from an
LD_PRELOAD shim (built here with gcc) in the archive_command's environment: write() and
fsync() on files below the repository fail with EIO or sleep, as a control file says.

For every fault: archiving fails cleanly (wal-push exits non-zero with one line in the server
log, nothing stored under a final name), PostgreSQL keeps the segment (.ready stays),
`markship status` says archiving is failing, and once the fault is gone archiving catches up,
a mark completes, verify passes and a restore to the mark has every row."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from markship.pg.scratch import chown_to
from tests.support.checks import (
    archiver,
    assert_repository_sound,
    one_error_line,
    ready_files,
    stored_wal,
    switch_wal,
    temp_objects,
    wait_for,
)
from tests.support.fingerprints import Ledger, load_pgbench
from tests.support.servers import MARKSHIP, OS_USER, Group, GroupFactory

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Faults for files below $FAULT_PREFIX, chosen by the first word of the file $FAULT_CONTROL:
   "eio-write", "eio-fsync", or "slow N" (N ms before each write and fsync). */
static int below_prefix(int fd) {
    const char *prefix = getenv("FAULT_PREFIX");
    char link[64], path[4096];
    if (!prefix) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

static int control(char *word, size_t size) {
    const char *name = getenv("FAULT_CONTROL");
    int ms = 0;
    word[0] = 0;
    if (!name) return 0;
    FILE *f = fopen(name, "r");
    if (!f) return 0;
    if (fscanf(f, "%31s %d", word, &ms) < 1) word[0] = 0;
    fclose(f);
    (void)size;
    return ms;
}

static int fault(int fd, const char *eio_word) {
    char word[32];
    int ms;
    if (!below_prefix(fd)) return 0;
    ms = control(word, sizeof word);
    if (strcmp(word, eio_word) == 0) { errno = EIO; return -1; }
    if (strcmp(word, "slow") == 0 && ms > 0) {
        struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000L };
        nanosleep(&t, NULL);
    }
    return 0;
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (fault(fd, "eio-write") < 0) return -1;
    return real(fd, buf, count);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (fault(fd, "eio-fsync") < 0) return -1;
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (fault(fd, "eio-fsync") < 0) return -1;
    return real(fd);
}
"""


@dataclass
class Faulty:
    """A one-server group whose repository is a tmpfs of its own, and the knobs of its
    faults."""

    group: Group
    mount: Path
    shim: Path
    control: Path

    def fill(self, leave_bytes: int = 0) -> Path:
        """Fill the file system up, leaving about `leave_bytes` free; returns the filler."""
        filler = self.mount / "filler"
        free = os.statvfs(self.mount).f_bavail * os.statvfs(self.mount).f_frsize
        with open(filler, "wb") as out:
            remaining = max(free - leave_bytes, 0)
            block = b"\0" * (1 << 20)
            try:
                while remaining > 0:
                    remaining -= out.write(block[:remaining])
                    out.flush()
            except OSError:
                pass  # full
        return filler

    def set_shim(self, mode: str) -> None:
        self.control.write_text(mode + "\n")
        self.control.chmod(0o644)

    def archive_through_shim(self) -> None:
        """archive_command with the shim preloaded (faults then follow the control file)."""
        alpha = self.group.servers[0]
        command = (f"FAULT_PREFIX={self.mount}/ FAULT_CONTROL={self.control} "
                   f"LD_PRELOAD={self.shim} {MARKSHIP} --config {self.group.config_path} "
                   "wal-push --server alpha %p")
        alpha.psql(f"ALTER SYSTEM SET archive_command = '{command}'")
        alpha.psql("SELECT pg_reload_conf()")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-shim")
    folder.chmod(0o755)
    source = folder / "faultshim.c"
    source.write_text(SHIM_C)
    library = folder / "faultshim.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(source), "-ldl"],
                   check=True, capture_output=True)
    library.chmod(0o755)
    for parent in library.parents:  # every directory above must be enterable by postgres
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return library


@pytest.fixture
def faulty(pg_group: GroupFactory, shim_library: Path) -> Iterator[Faulty]:
    """One server archiving into a 48 MiB tmpfs repository, backed up once."""
    group = pg_group(1)
    group.repo.mkdir(exist_ok=True)  # made by the fixture; the tmpfs is mounted on it
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0750", "tmpfs",
                    str(group.repo)], check=True)
    try:
        chown_to(group.repo, OS_USER)
        control = group.workdir / "fault-control"
        control.write_text("")
        control.chmod(0o644)
        yield Faulty(group, group.repo, shim_library, control)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(group.repo)], check=False)
        subprocess.run(["umount", "-l", str(group.repo)], check=False)


def _markship_log_lines(group: Group) -> list[str]:
    text = group.servers[0].log_file.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    return [line for line in text.splitlines() if line.startswith("markship")]


def _archiving_fails_cleanly(group: Group, ledger: Ledger, expected: str,
                             status_too: bool = True) -> str:
    """A segment finished now is not archived: wal-push exits 1 with one line naming
    `expected`, PostgreSQL keeps the file, nothing is stored under a final name, and
    `markship status` says archiving is failing. Returns the segment."""
    alpha = group.servers[0]
    ledger.commit(200)
    failed_before = int(archiver(alpha)["failed_count"])
    segment = switch_wal(alpha)
    wait_for(lambda: int(archiver(alpha)["failed_count"]) > failed_before,
             f"the archiver failing on {segment}", timeout=30)
    assert archiver(alpha)["last_failed_wal"] == segment
    assert segment in ready_files(alpha) and (alpha.data_dir / "pg_wal" / segment).exists()
    assert not stored_wal(group, "alpha", segment)
    assert not temp_objects(group.repo, "wal"), "a failed push left a partly written object"
    lines = _markship_log_lines(group)
    assert lines, "wal-push said nothing in the server log"
    for line in lines:
        assert line.startswith("markship wal-push: error: ") and expected in line, line
    assert "archive command failed with exit code 1" in alpha.log_file.read_text()
    if status_too:
        _status_says_failing(group, segment)
    return segment


def _status_says_failing(group: Group, segment: str) -> None:
    status = json.loads(group.markship("status", "--json").stdout)["servers"][0]
    assert not status["healthy"] and status["last_failed_wal"] == segment, status
    assert status["archiver_failed_count"] >= 1


def _catches_up(group: Group, ledger: Ledger, segment: str) -> None:
    """With the fault gone: the segment and everything after it archived, a mark completes,
    verify passes, a restore to the mark has every row."""
    alpha = group.servers[0]
    switch_wal(alpha)  # wakes the archiver (it waits up to a minute after three failures)
    wait_for(lambda: stored_wal(group, "alpha", segment) and not ready_files(alpha),
             "archiving to catch up", timeout=90, interval=0.2)
    rows = ledger.commit(10)
    mark = json.loads(group.ok("mark", "--json"))["name"]
    ledger.commit(10)
    marks = {m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
    assert marks[mark]["complete"], marks[mark]
    status = json.loads(group.ok("status", "--json"))["servers"][0]
    assert status["healthy"], status
    assert_repository_sound(group)
    restored = group.restore("alpha", "--name", mark)
    assert Ledger.count_on(restored) == rows


def _ready(faulty: Faulty) -> tuple[Group, Ledger]:
    group = faulty.group
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    return group, ledger


@pytest.mark.reliability("repository disk full (archiving, marks)",
                         fault="the repository's file system is filled up (tmpfs)",
                         expected="wal-push exits 1 with one 'disk full' line, .ready stays, "
                                  "status says failing; a mark fails in one line and is not "
                                  "listed; after space is freed all is archived and restores")
def test_disk_full_archiving_and_marks(faulty: Faulty) -> None:
    group, ledger = _ready(faulty)
    filler = faulty.fill()
    segment = _archiving_fails_cleanly(group, ledger, "repository disk full")
    before = json.loads(group.ok("marks", "--json"))
    mark = group.markship("mark")
    assert mark.returncode != 0
    assert "disk full" in one_error_line(mark.stderr)
    assert json.loads(group.ok("marks", "--json")) == before
    assert not temp_objects(group.repo, "marks")
    filler.unlink()
    _catches_up(group, ledger, segment)


@pytest.mark.reliability("repository disk full during a backup",
                         fault="the repository fills up while pg_basebackup streams into it",
                         expected="backup exits non-zero with one error line; its set is never "
                                  "listed complete, no base backup under a final name; after "
                                  "space is freed a backup completes and restores")
def test_disk_full_during_backup(faulty: Faulty) -> None:
    group = faulty.group
    load_pgbench(group.servers[0])
    ledger = Ledger(group)
    rows = ledger.commit(20)
    filler = faulty.fill(leave_bytes=1 << 20)
    proc = group.markship("backup")
    assert proc.returncode != 0
    line = one_error_line(proc.stderr)
    assert "disk full" in line, line
    sets = json.loads(group.ok("list", "--json"))
    assert not any(s["complete"] for s in sets), sets
    assert not list(group.repo.glob("backups/*/*/base.tar.zst"))
    assert not temp_objects(group.repo, "backups")
    filler.unlink()
    group.ok("backup")
    assert [s["complete"] for s in json.loads(group.ok("list", "--json"))][-1]
    assert_repository_sound(group)
    assert Ledger.count_on(group.restore("alpha")) == rows


@pytest.mark.reliability("repository read-only",
                         fault="the repository file system is remounted read-only",
                         expected="wal-push exits 1 with one 'not writable' line, .ready stays, "
                                  "status says failing; after remounting read-write archiving "
                                  "catches up, a mark completes, restore has every row")
def test_read_only_repository(faulty: Faulty) -> None:
    group, ledger = _ready(faulty)
    subprocess.run(["mount", "-o", "remount,ro", str(faulty.mount)], check=True)
    segment = _archiving_fails_cleanly(group, ledger, "Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw", str(faulty.mount)], check=True)
    _catches_up(group, ledger, segment)


@pytest.mark.reliability("repository folder without permission",
                         fault="wal/<server>/ made root-owned, mode 000 (EACCES for the "
                               "archiving user)",
                         expected="wal-push exits 1 with one 'Permission denied' line naming "
                                  "the folder, .ready stays; after the mode is restored "
                                  "archiving catches up and restores")
def test_wal_folder_permission_denied(faulty: Faulty) -> None:
    group, ledger = _ready(faulty)
    folder = group.repo / "wal" / "alpha"
    folder.chmod(0o000)
    os.chown(folder, 0, 0)
    try:
        segment = _archiving_fails_cleanly(group, ledger, f"{folder}/", status_too=False)
    finally:
        chown_to(folder, OS_USER)
        folder.chmod(0o750)
    _catches_up(group, ledger, segment)


@pytest.mark.reliability("status with a WAL folder without permission",
                         fault="wal/<server>/ root-owned, mode 000, while archiving fails",
                         expected="markship status still reports every server, this one as "
                                  "failing to archive")
def test_status_reports_servers_when_a_wal_folder_is_unreadable(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    ledger = Ledger(group)
    group.ok("backup")
    folder = group.repo / "wal" / "alpha"
    folder.chmod(0o000)
    os.chown(folder, 0, 0)
    try:
        segment = _archiving_fails_cleanly(group, ledger, "Permission denied", status_too=False)
        _status_says_failing(group, segment)
        report = group.markship("status")
        assert report.returncode == 1 and "alpha" in report.stdout
        assert f"✗ alpha: repository not readable: {folder}" in report.stdout, report.stdout
    finally:
        chown_to(folder, OS_USER)
        folder.chmod(0o750)


@pytest.mark.reliability("repository I/O error", fault="write() or fsync() of files below the "
                         "repository fail with EIO (LD_PRELOAD shim in archive_command)",
                         expected="wal-push exits 1 with one 'I/O error' line, no partly "
                                  "written object left, .ready stays, status says failing; "
                                  "after the fault archiving catches up and restores")
@pytest.mark.parametrize("mode", ["eio-write", "eio-fsync"])
def test_io_error(faulty: Faulty, mode: str) -> None:
    group, ledger = _ready(faulty)
    faulty.archive_through_shim()
    faulty.set_shim(mode)
    segment = _archiving_fails_cleanly(group, ledger, "Input/output error")
    faulty.set_shim("")
    _catches_up(group, ledger, segment)


@pytest.mark.reliability("slow repository", fault="every write and fsync below the repository "
                         "takes 150 ms (shim) while ten segments and marks pile up",
                         expected="no failure; a mark is listed complete only once its WAL is "
                                  "stored; the backlog drains; verify passes; restore has "
                                  "every row")
def test_slow_repository(faulty: Faulty) -> None:
    group, ledger = _ready(faulty)
    alpha = group.servers[0]
    faulty.archive_through_shim()
    faulty.set_shim("slow 150")
    failed = int(archiver(alpha)["failed_count"])
    seen_complete: set[str] = set()
    marks: list[str] = []

    def complete_only_when_stored() -> None:
        for mark in json.loads(group.ok("marks", "--json")):
            if mark["complete"]:
                wal_file = mark["points"]["alpha"]["wal_file"]
                assert stored_wal(group, "alpha", wal_file), f"{mark['name']} complete early"
                seen_complete.add(mark["name"])

    for _ in range(5):
        ledger.commit(500)
        switch_wal(alpha)
        marks.append(json.loads(group.ok("mark", "--json"))["name"])  # one more segment
        complete_only_when_stored()
    assert len(ready_files(alpha)) >= 2, "no backlog built up: the shim did not slow pushes"
    status = json.loads(group.ok("status", "--json"))["servers"][0]
    assert status["archive_lag_bytes"] > 0, status
    rows = ledger.commit(10)
    last = json.loads(group.ok("mark", "--json"))["name"]

    def drained() -> bool:
        complete_only_when_stored()
        return not ready_files(alpha) and last in seen_complete

    wait_for(drained, "the backlog to drain", timeout=120, interval=0.3)
    assert set(marks) <= seen_complete
    assert int(archiver(alpha)["failed_count"]) == failed, "slow storage is not a failure"
    faulty.set_shim("")
    assert_repository_sound(group)
    assert Ledger.count_on(group.restore("alpha", "--name", last)) == rows
