"""Logical dumps: `pg_dump -Fc` of one database streamed into the repository, and back out into
`pg_restore`, for stores that WAL shipping does not cover.

```
dumps/<name>/<id>.dump.zst     pg_dump's custom-format archive, zstd-compressed (and encrypted)
dumps/<name>/<id>.json         DumpRecord, written last: only after pg_dump exited 0
```
A dump whose pg_dump failed, or whose writer was killed, has no record and is never listed or
restored. A restore runs in one transaction and holds back the archive's last bytes until the
stored object has matched its checksum, so a damaged dump restores nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import psycopg
import zstandard

from markship import __version__, names
from markship.config.model import Config, DumpSection
from markship.config.schedule import parse_schedule
from markship.errors import (
    CorruptObject,
    KeyProblem,
    MarkshipError,
    ObjectMissing,
    RestoreError,
    ServerError,
)
from markship.marks.choose import newest_complete
from markship.pg import programs, sql
from markship.pg.conninfo import ProgramConninfo, without_secrets
from markship.repository import catalog, layout, records
from markship.repository.base import Readable, Repository, Writable
from markship.repository.hashing import HashingReader
from markship.repository.records import Name, ObjectRef, Record
from markship.timefmt import show, utcnow

CHUNK = 1024 * 1024


class DumpError(MarkshipError):
    """pg_dump failed; nothing was recorded."""


class DumpRecord(Record):
    """One finished dump of one database; written only after pg_dump exited 0."""

    name: Name
    server: Name
    database: str
    id: Name
    created_at: datetime  # when pg_dump started (its snapshot is taken right after)
    finished_at: datetime
    mark: Name | None  # the newest complete group mark when the dump started
    archive: ObjectRef
    pg_version: str
    pg_version_num: int
    raw_size: int  # bytes pg_dump wrote, before compression
    markship_version: str


# -- repository keys ------------------------------------------------------------------------------


def dump_prefix(name: str) -> str:
    """The dump's folder (repository.layout). These key functions raise BadName
    (markship.names) for a name no dump can have (the default name SERVER-DATABASE carries
    the database name, which may hold any character)."""
    return layout.dump_prefix(names.check(name, "dump name"))


def archive_key(name: str, dump_id: str) -> str:
    return layout.dump_archive_key(names.check(name, "dump name"), dump_id)


def record_key(name: str, dump_id: str) -> str:
    return layout.dump_record_key(names.check(name, "dump name"), dump_id)


def _new_id(repo: Repository, name: str, now: datetime) -> str:
    base = now.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while repo.exists(record_key(name, candidate)) or repo.exists(archive_key(name, candidate)):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


# -- PostgreSQL programs --------------------------------------------------------------------------


class _Program:
    """A PostgreSQL program run without a shell; the end of its stderr is kept for errors.
    `login` carries the connection's secrets in its environment (closed by kill())."""

    def __init__(self, argv: list[str], login: ProgramConninfo, *, stdin: int | None,
                 stdout: int | None) -> None:
        self.name = os.path.basename(argv[0])
        self.login = login
        try:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout,
                                         stderr=subprocess.PIPE, env=login.env)
        except BaseException:
            login.close()
            raise
        self.lines: deque[str] = deque(maxlen=20)
        self._reader = threading.Thread(target=self._read_errors, daemon=True,
                                        name=f"{self.name}-stderr")
        self._reader.start()

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self.lines.append(line)

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def error_line(self, code: int) -> str:
        """The last `error:` line (later `detail:`/`hint:` lines say less), else the last."""
        for line in reversed(self.lines):
            if f"{self.name}: error:" in line:
                return line
        return self.lines[-1] if self.lines else f"{self.name} exited with status {code}"

    def kill(self) -> None:
        """Kill it if it still runs, and close our ends of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(timeout=10)
        self.login.close()


def _tools_dir(config: Config, server_name: str, version_num: int) -> Path | None:
    """The server's configured bin_dir (when it is still configured), else the installed
    tools matching `version_num`."""
    configured = next((s.bin_dir for s in config.servers if s.name == server_name), None)
    return programs.bin_dir(configured, version_num)


# -- dumping --------------------------------------------------------------------------------------


def run_dump(config: Config, repo: Repository, dump: DumpSection) -> DumpRecord:
    """pg_dump one database into the repository and record it; returns the record.

    The archive streams from pg_dump through zstd into the repository (never to local disk);
    the record is written only once pg_dump exited 0. Raises ServerError when the database
    cannot be reached, DumpError (with pg_dump's error line) when pg_dump fails, LockedError
    while another run of the same dump holds its lock.
    """
    name = names.check(dump.dump_name, "dump name")
    server = config.server(dump.server)
    conninfo = psycopg.conninfo.make_conninfo(server.conninfo, dbname=dump.database)
    with sql.connect(conninfo, f"{server.name} (database {dump.database})") as conn:
        version_num = conn.info.server_version
        version = conn.info.parameter_status("server_version") or str(version_num)
    pg_dump = programs.tool(programs.bin_dir(server.bin_dir, version_num), "pg_dump")
    catalog.ensure_marker(repo, config.group.name, utcnow())
    with repo.lock(f"dump-{name}", f"markship dumps run --dump {name}"):
        mark = _newest_mark(config, repo)
        created_at = utcnow()
        dump_id = _new_id(repo, name, created_at)
        login = ProgramConninfo(conninfo)
        program = _Program([pg_dump, "-Fc", "-Z0", "--no-password", "-d", login.argv], login,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        raw_size = 0

        def fill(sink: Writable) -> None:
            nonlocal raw_size
            assert program.proc.stdout is not None
            compressor = zstandard.ZstdCompressor(
                level=config.repository.compression_level, write_checksum=True, threads=-1)
            packing = compressor.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
            with packing as packer:
                while chunk := program.proc.stdout.read(CHUNK):
                    packer.write(chunk)
                    raw_size += len(chunk)
            code = program.wait()
            if code != 0:
                # Raised inside fill: the repository discards the temp object, never named.
                raise DumpError(f"pg_dump of {name} failed: {program.error_line(code)}",
                                "fix what pg_dump names (the configured user must be able to "
                                "read every object), then run markship dumps run again")

        try:
            stored = repo.write_by(archive_key(name, dump_id), fill)
        finally:
            program.kill()  # a no-op once pg_dump exited
        record = DumpRecord(
            name=name, server=server.name, database=dump.database, id=dump_id,
            created_at=created_at, finished_at=utcnow(), mark=mark,
            archive=ObjectRef(key=stored.key, size=stored.size, sha256=stored.sha256),
            pg_version=version, pg_version_num=version_num, raw_size=raw_size,
            markship_version=__version__,
        )
        try:
            records.write_record(repo, record_key(name, dump_id), record)
        except BaseException:
            repo.delete(stored.key)
            raise
    return record


def _newest_mark(config: Config, repo: Repository) -> str | None:
    """The newest complete mark's name. A host that only writes to an encrypted repository
    (no identity file) cannot read mark records: its dumps record no mark rather than fail."""
    try:
        state = newest_complete(repo, config)
    except KeyProblem:
        return None
    return state.record.name if state else None


# -- finding dumps --------------------------------------------------------------------------------


def list_dumps(repo: Repository, name: str | None = None,
               damaged: list[records.Damaged] | None = None) -> list[DumpRecord]:
    """Every good dump record (of `name`, or of every name): by name, then oldest first.
    Damaged records are reported (to `damaged` when given) and left out. Raises BadName for
    a name no dump can have."""
    folders = [names.check(name, "dump name")] if name is not None else \
        records.good_folders(repo, layout.DUMPS, damaged)
    found: list[DumpRecord] = []
    for each in folders:
        found += records.read_folder(repo, dump_prefix(each), DumpRecord, _stem_in(each),
                                     damaged)
    return sorted(found, key=lambda d: (d.name, d.created_at, d.id))


def _stem_in(name: str) -> Callable[[DumpRecord], str]:
    """A dump record's expected file name (without .json): its id, and only in the folder
    of its own name."""
    return lambda record: record.id if record.name == name else f"{record.name}/{record.id}"


def choose(repo: Repository, name: str, at: datetime | None = None) -> DumpRecord:
    """The newest dump of `name` made at or before `at` (an aware time), else the newest.

    Raises ObjectMissing when there is no dump of that name, RestoreError when every dump is
    newer than `at`.
    """
    dumps = list_dumps(repo, name)
    if not dumps:
        raise ObjectMissing(f"no dump named {name} in the repository",
                            "markship dumps list shows the dumps; markship dumps run makes one")
    if at is None:
        return dumps[-1]
    earlier = [d for d in dumps if d.created_at <= at]
    if not earlier:
        raise RestoreError(
            f"no dump of {name} at or before {show(at)}: the oldest is from "
            f"{show(dumps[0].created_at)}",
            "give a later --at, or leave it out for the newest dump",
        )
    return earlier[-1]


def newest_dump(repo: Repository, name: str) -> DumpRecord | None:
    dumps = list_dumps(repo, name)
    return dumps[-1] if dumps else None


# -- restoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    record: DumpRecord
    target: str  # the target conninfo without its password


def restore_dump(config: Config, repo: Repository, record: DumpRecord,
                 conninfo: str) -> RestoreResult:
    """Stream a dump into `pg_restore` for the existing database `conninfo` names.

    pg_restore runs with --single-transaction, and the archive's last bytes reach it only
    after the stored object matched its recorded sha256: a damaged dump, or a failed
    pg_restore, leaves the target database as it was. Raises RestoreError when the target
    cannot be reached (or does not exist) or pg_restore fails, CorruptObject when the stored
    dump fails its checksum or cannot be decrypted or decompressed.
    """
    shown = without_secrets(conninfo)
    target_version = _target_version(conninfo, shown)
    tools = _tools_dir(config, record.server, max(record.pg_version_num, target_version))
    pg_restore = programs.tool(tools, "pg_restore")
    login = ProgramConninfo(conninfo)
    key = record.archive.key
    stored = repo.open_stored(key)
    hashed = HashingReader(stored)  # the checksum covers the stored (maybe encrypted) bytes
    program = _Program([pg_restore, "-Fc", "--no-owner", "--exit-on-error",
                        "--single-transaction", "--no-password", "-d", login.argv], login,
                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert program.proc.stdin is not None
    try:
        problem, last = _feed_held_back(repo, key, hashed, program.proc.stdin)
        while hashed.read(CHUNK):  # after a decryption error: the rest, for the checksum
            pass
        if hashed.hexdigest() != record.archive.sha256 or hashed.size != record.archive.size:
            problem = "fails its checksum"
        if problem is None:
            _write(program.proc.stdin, last)
        else:
            program.kill()  # before it saw the end of the archive: it never commits
        with contextlib.suppress(BrokenPipeError):
            program.proc.stdin.close()
        code = program.wait()
    finally:
        program.kill()
        stored.close()
    if problem is not None:
        raise CorruptObject(f"dump {key} {problem}; nothing was restored",
                            "run markship verify, or restore an older dump with --at")
    if code != 0:
        line = program.error_line(code)
        if "database" in line and "does not exist" in line:
            hint = "create the target database first (CREATE DATABASE …), then retry"
        else:
            hint = ("pg_restore ran in one transaction, so nothing was applied; restore into "
                    "an empty database")
        raise RestoreError(f"pg_restore of dump {record.name} {record.id} failed: {line}", hint)
    return RestoreResult(record, shown)


def _target_version(conninfo: str, shown: str) -> int:
    """The target server's version; RestoreError naming the cause when it cannot be reached."""
    try:
        with sql.connect(conninfo, "restore target") as conn:
            return conn.info.server_version
    except ServerError as exc:
        detail = exc.message.split(": ", 1)[-1]
        hint = ("the target database must exist: create it first (CREATE DATABASE …), empty"
                if "does not exist" in detail
                else "check that the server is running and the --conninfo")
        raise RestoreError(f"cannot connect to the restore target ({shown}): {detail}",
                           hint) from None


def _feed_held_back(repo: Repository, key: str, hashed: HashingReader,
                    stdin: IO[bytes]) -> tuple[str | None, bytes]:
    """Decrypt and decompress the stored dump into `stdin`, all but the last chunk, and read
    the stored object to its end (so that `hashed` has seen every byte).

    Returns what went wrong reading the object (None when nothing did) and the held-back
    last chunk: pg_restore cannot finish, and so cannot commit, without it.
    """
    source: Readable = repo.plaintext(hashed, key)
    reader = zstandard.ZstdDecompressor().stream_reader(
        source, read_size=CHUNK)  # type: ignore[arg-type]
    pending = b""
    problem: str | None = None
    try:
        while chunk := reader.read(CHUNK):
            if pending and not _write(stdin, pending):
                pending = b""
                break  # pg_restore stopped: its exit status says why
            pending = chunk
    except zstandard.ZstdError as exc:
        problem, pending = f"cannot be decompressed ({exc})", b""
    except MarkshipError as exc:  # decryption: damaged, or another key
        return f"cannot be read ({exc.one_line()})", b""
    try:
        # Through the plaintext reader, not `hashed`: a decrypting reader still reads it.
        while source.read(CHUNK):
            pass
    except MarkshipError as exc:
        return problem or f"cannot be read ({exc.one_line()})", b""
    return problem, pending


def _write(stdin: IO[bytes], data: bytes) -> bool:
    """Write to pg_restore; False when it has exited (its exit status tells why)."""
    try:
        stdin.write(data)
        stdin.flush()
    except BrokenPipeError:
        return False
    return True


def dump_due(config: Config, repo: Repository, dump: DumpSection, now: datetime) -> bool:
    """Whether `dump` should run at `now`: it has no dump yet, or its schedule has come round
    since the newest one started. Raises ConfigError for a bad schedule."""
    schedule = parse_schedule(dump.schedule, f"[[dump]] {dump.dump_name} schedule")
    newest = newest_dump(repo, dump.dump_name)
    return newest is None or schedule.next_after(newest.created_at) <= now
