"""Recovery drills: prove, on scratch servers, that the group can be brought back.

A drill restores the whole group to one complete mark (`backup.group_restore.restore_group`)
into a temporary directory (tablespaces included) on free loopback ports, settles prepared
transactions as a failover would, runs the user's checks, measures RTO and RPO, stores a
report (`drills/<id>.json` and `.md`) and always removes the scratch servers again.
Production servers and DR standbys are never contacted: the scratch servers run with
`archive_mode = off`, on ports no configured server or standby uses, and every process the
cleanup stops is found under the drill's own directory.

Check files (`--check-sql`): one check per line; `#` starts a comment line; a line that starts
with whitespace continues the check above it.

    [TARGETS] SQL           SQL must return one row with one boolean column, true, on every
    SQL                     target (without a prefix: on every server)
    sum(TARGETS): SQL == N  SQL returns one number on each target; their sum must equal N

TARGETS is a comma-separated list of server names or `*` (every server), each optionally
followed by `/DATABASE` (default: the database of the server's conninfo).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from pydantic import Field

from markship.config.model import Config
from markship.dr.drillchecks import Check
from markship.dr.drillchecks import label as target_label
from markship.errors import MarkshipError, first_line
from markship.pg import recovery
from markship.pg import sql as postgres
from markship.pg.conninfo import address
from markship.pg.datadir import in_production, postmaster_status, server_log, stop_immediately
from markship.pg.lsn import format_lsn
from markship.pg.scratch import free_port_range
from markship.repository import layout, records
from markship.repository.base import Repository
from markship.repository.records import Record
from markship.timefmt import show, utcnow

if TYPE_CHECKING:
    from markship.backup.basebackup import ProgressFn

HOST = "127.0.0.1"
_SOCKET_PATH_MAX = 107  # sun_path, less the terminating NUL

Progress = Callable[[str], None]


class DrillServer(Record):
    port: int
    restored: bool  # promoted and accepting connections
    mark_lsn: str = ""
    log_tail: list[str] = Field(default_factory=list)  # the server's log when it failed


class DrillResolution(Record):
    server: str
    database: str
    gid: str
    action: str  # "commit" | "rollback"


class DrillCheck(Record):
    file: str
    line: int
    check: str
    ok: bool
    result: str  # "true", "false on bravo", "sum 20000, expected 1", "error on alpha: …"
    values: dict[str, str] = Field(default_factory=dict)  # target → value or "error: …"


class DrillRecord(Record):
    id: str
    group: str
    mark: str
    mark_created_at: datetime
    started_at: datetime
    finished_at: datetime
    rpo_seconds: float  # the mark's age when the drill started
    rto_seconds: float | None  # drill start → every server open; None if that never came
    work_dir: str
    servers: dict[str, DrillServer]
    resolved: list[DrillResolution] = Field(default_factory=list)
    checks: list[DrillCheck] = Field(default_factory=list)
    error: str | None = None  # why the group did not come up
    cleanup_problems: list[str] = Field(default_factory=list)
    ok: bool


def list_drills(repo: Repository) -> list[DrillRecord]:
    """Every stored drill, oldest first (a damaged record is reported and left out)."""
    found = records.read_folder(repo, layout.DRILLS, DrillRecord)
    return sorted(found, key=lambda r: (r.started_at, r.id))


# -- the drill ------------------------------------------------------------------------------------


def run_drill(config: Config, repo: Repository, checks: list[Check], *,
              mark_name: str | None = None, work_dir: Path | None = None,
              progress: Progress | None = None,
              on_progress: ProgressFn | None = None) -> DrillRecord:
    """Restore the group to a mark on scratch servers, check it, measure it, report, clean up.
    `progress` hears what the drill does, in sentences; `on_progress` how much of each
    server's base backup was read (as restore_server's).

    Raises MarkshipError before anything starts when there is no usable mark or no scratch
    directory; a group that does not come up or a failing check is a failed drill (recorded,
    `ok` false). KeyboardInterrupt (and SIGTERM) stop and remove the scratch servers, record
    nothing and propagate.
    """
    from markship.backup.group_restore import restore_group
    from markship.config.tablespacemap import EVERY
    from markship.marks.choose import choose_mark

    say = progress or (lambda _text: None)
    started_at, began = utcnow(), time.monotonic()
    mark = choose_mark(config, repo, mark_name).record
    rpo = max(0.0, (started_at - mark.created_at).total_seconds())
    names = [s.name for s in config.servers]
    port_base = free_port_range(len(names), HOST, _configured_ports(config))
    temp = _scratch_dir(work_dir, names)
    servers = {name: DrillServer(port=port_base + i, restored=False,
                                 mark_lsn=format_lsn(mark.points[name].lsn)
                                 if name in mark.points else "")
               for i, name in enumerate(names)}
    say(f"restoring mark {mark.name} (made {show(mark.created_at)}, {rpo:.1f} s before the "
        f"drill) into {temp} on {HOST}:{port_base}-{port_base + len(names) - 1}")
    rto: float | None = None
    error: str | None = None
    resolved: list[DrillResolution] = []
    results: list[DrillCheck] = []
    interrupted = True
    try:
        with _sigterm_interrupts():
            try:
                template = str(temp).replace("{", "{{").replace("}", "}}") + "/{server}"
                # Tablespaces too go into the scratch directory, never to their original
                # places (where production's servers use them); '~' is in no server name.
                spaces = {EVERY: f"{temp}/~tablespaces/{{server}}/{{oid}}"}
                report = restore_group(config, repo, mark.name, template, port_base, HOST,
                                       on_progress, tablespace_map=spaces)
                resolved = [DrillResolution(server=r.server, database=r.database, gid=r.gid,
                                            action=r.action) for r in report.resolutions]
                conninfos = {n: info["conninfo"] for n, info in report.servers.items()}
                _confirm_open(conninfos)
                rto = time.monotonic() - began
                for name, info in report.servers.items():
                    servers[name] = DrillServer(port=int(info["port"]), restored=True,
                                                mark_lsn=info["mark_lsn"])
                say(f"all {len(names)} servers open {rto:.1f} s after the drill started")
                results = [run_check(check, conninfos) for check in checks]
            except (MarkshipError, psycopg.Error) as exc:
                error = first_line(exc)
                servers = {n: _failed_server(temp / n, s) for n, s in servers.items()}
        interrupted = False
    finally:
        with _signals_ignored():
            problems = cleanup(config, temp, names)
        if interrupted:
            # A restore thread still running when the interrupt came may start its server
            # after this cleanup; sweep once more when the process exits.
            import atexit

            atexit.register(cleanup, config, temp, names)
    finished_at = utcnow()
    ok = error is None and not problems and all(c.ok for c in results)
    record = DrillRecord(id=_new_id(repo, started_at), group=config.group.name, mark=mark.name,
                         mark_created_at=mark.created_at, started_at=started_at,
                         finished_at=finished_at, rpo_seconds=round(rpo, 3),
                         rto_seconds=None if rto is None else round(rto, 3), work_dir=str(temp),
                         servers=servers, resolved=resolved, checks=results, error=error,
                         cleanup_problems=problems, ok=ok)
    repo.write_bytes(layout.drill_report_key(record.id), render_markdown(record).encode(),
                     metadata=True)
    records.write_record(repo, layout.drill_record_key(record.id), record)
    return record


def _new_id(repo: Repository, now: datetime) -> str:
    base = now.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while (repo.exists(layout.drill_record_key(candidate))
           or repo.exists(layout.drill_report_key(candidate))):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _scratch_dir(work_dir: Path | None, servers: list[str]) -> Path:
    try:
        temp = Path(tempfile.mkdtemp(prefix="markship-drill-", dir=work_dir)).resolve()
    except OSError as exc:
        where = work_dir or tempfile.gettempdir()
        raise MarkshipError(f"cannot create a scratch directory in {where}: {exc.strerror}",
                            "give --work-dir a directory the repository's OS user can write"
                            ) from None
    longest = max(len(str(temp / name / ".s.PGSQL.65535")) for name in servers)
    if longest > _SOCKET_PATH_MAX:
        temp.rmdir()
        raise MarkshipError(f"scratch directory {temp} is too deep for PostgreSQL's Unix "
                            f"socket path ({longest} > {_SOCKET_PATH_MAX} bytes)",
                            "give --work-dir a shorter path")
    return temp


def _configured_ports(config: Config) -> set[int]:
    """Ports of production servers and standbys: never used for scratch servers, even when
    such a server is down right now."""
    ports: set[int] = set()
    for server in config.servers:
        try:
            value = str(psycopg.conninfo.conninfo_to_dict(server.conninfo).get("port") or 5432)
        except psycopg.ProgrammingError:
            continue  # the restore names the bad conninfo
        ports.update(int(p) for p in value.split(",") if p.strip().isdigit())
    if config.dr_site is not None:
        ports.update(s.port for s in config.dr_site.standbys)
    return ports


def _confirm_open(conninfos: dict[str, str]) -> None:
    """Every scratch server accepts connections, is out of recovery and does not archive."""
    for name, conninfo in conninfos.items():
        with postgres.connect(conninfo, name) as conn:
            state = recovery.open_state(conn)
        where = address(conninfo)
        if state is None or state.recovering:
            raise MarkshipError(f"scratch server {name} ({where}) is still in recovery")
        if state.archive_mode != "off":
            raise MarkshipError(f"scratch server {name} ({where}) runs with archive_mode = "
                                f"{state.archive_mode}: it could archive into production's "
                                "repository", "report this as a markship bug")


def _failed_server(data_dir: Path, server: DrillServer) -> DrillServer:
    restored = postmaster_status(data_dir) == "ready" and in_production(data_dir)
    try:
        lines = server_log(data_dir).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    return DrillServer(port=server.port, restored=restored, mark_lsn=server.mark_lsn,
                       log_tail=[] if restored else lines[-20:])


# -- checks ---------------------------------------------------------------------------------------


class _Wrong(Exception):
    """A check query returned something other than what its kind needs."""


def run_check(check: Check, conninfos: dict[str, str]) -> DrillCheck:
    """Run one check on its targets (read-only sessions); never raises for a failing check."""
    values: dict[str, str] = {}
    numbers: list[Decimal] = []
    errors: list[str] = []
    falses: list[str] = []
    for target in check.targets:
        label = target_label(target)
        try:
            value = _query_one(conninfos[target[0]], target, check.sql)
            if check.kind == "true":
                if not isinstance(value, bool):
                    raise _Wrong(f"returned {_describe(value)}, not a boolean")
                values[label] = "true" if value else "false"
                if not value:
                    falses.append(label)
            else:
                if value is None:
                    raise _Wrong("returned NULL (wrap the expression in coalesce(…, 0))")
                if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                    raise _Wrong(f"returned {_describe(value)}, not a number")
                number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
                numbers.append(number)
                values[label] = str(number)
        except (_Wrong, MarkshipError) as exc:
            text = exc.one_line() if isinstance(exc, MarkshipError) else str(exc)
            values[label] = f"error: {text}"
            errors.append(f"error on {label}: {text}")
    if errors:
        return DrillCheck(file=check.file, line=check.line, check=check.text, ok=False,
                          result="; ".join(errors), values=values)
    if check.kind == "true":
        result = f"false on {', '.join(falses)}" if falses else "true"
        return DrillCheck(file=check.file, line=check.line, check=check.text, ok=not falses,
                          result=result, values=values)
    total = sum(numbers, Decimal(0))
    ok = total == check.expected
    result = f"sum {total}" + (" as expected" if ok else f", expected {check.expected}")
    return DrillCheck(file=check.file, line=check.line, check=check.text, ok=ok, result=result,
                      values=values)


def _query_one(conninfo: str, target: tuple[str, str | None], sql: str) -> object:
    database = target[1]
    if database:
        conninfo = psycopg.conninfo.make_conninfo(conninfo, dbname=database)
    with postgres.connect(conninfo, target_label(target)) as conn:
        # Checks look, they do not change: a later check must see what the mark restored.
        postgres.read_only_session(conn)
        try:
            rows = postgres.query_values(conn, sql)
        except psycopg.Error as exc:
            raise _Wrong(first_line(exc)) from None
    if len(rows) != 1:
        raise _Wrong(f"returned {len(rows)} rows, not 1")
    columns = rows[0]
    if len(columns) != 1:
        raise _Wrong(f"returned {len(columns)} columns, not 1")
    return columns[0]


def _describe(value: object) -> str:
    if value is None:
        return "NULL"
    shown = repr(value) if isinstance(value, str) else str(value)
    return f"{type(value).__name__} {shown[:40]}"


# -- cleanup --------------------------------------------------------------------------------------


def cleanup(config: Config, temp: Path, servers: list[str]) -> list[str]:
    """Stop every scratch server under `temp` (immediate) and remove `temp`; the problems.

    Only processes whose data directory lies under `temp` are ever stopped.
    """
    problems: list[str] = []
    for name in servers:
        data_dir = temp / name
        if postmaster_status(data_dir) is not None:
            # a problem only when the stop cannot even be tried: a failed stop leaves a
            # postmaster that the sweep below finds and kills
            problem = stop_immediately(data_dir, config.server(name).bin_dir)
            if problem:
                problems.append(f"{name}: {problem}")
    for pid in scratch_postmasters(temp):
        _kill(pid)  # its stop failed or it started late: stop it all the same
    left = scratch_postmasters(temp)
    if left:
        problems.append(f"postmaster(s) {', '.join(map(str, left))} under {temp} did not stop")
    shutil.rmtree(temp, ignore_errors=True)
    if temp.exists():
        problems.append(f"{temp} could not be removed completely")
    return problems


def scratch_postmasters(temp: Path) -> list[int]:
    """PIDs of postgres processes started with a data directory under `temp` (from /proc)."""
    inside = str(temp).rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (argv and os.path.basename(argv[0]) == "postgres"
                and any(arg.startswith(inside) for arg in argv[1:])):
            found.append(int(entry))
    return found


def _kill(pid: int) -> None:
    """Immediate shutdown (SIGQUIT), then SIGKILL if the postmaster is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM interrupts the drill like Ctrl-C does, so the cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut the cleanup short and leave scratch servers running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- the report -----------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(record: DrillRecord) -> str:
    """The drill as a readable Markdown report."""
    rto = "-" if record.rto_seconds is None else f"{record.rto_seconds:.1f} s"
    lines = [
        f"# Recovery drill {record.id}: {'passed' if record.ok else 'FAILED'}", "",
        "| | |", "|---|---|",
        f"| Group | {record.group} |",
        f"| Mark | `{record.mark}` (made {show(record.mark_created_at)}) |",
        f"| Started | {show(record.started_at)} |",
        f"| Finished | {show(record.finished_at)} |",
        f"| RPO | {record.rpo_seconds:.1f} s (age of the mark when the drill started) |",
        f"| RTO | {rto} (drill start → every server promoted, settled and open) |",
        f"| Scratch directory | `{record.work_dir}` (removed) |", "",
    ]
    if record.error:
        lines += [f"**The group did not come up:** {record.error}", ""]
    lines += ["## Servers", "", "| server | port | restored | mark LSN |", "|---|---|---|---|"]
    for name, server in record.servers.items():
        lines.append(f"| {name} | {server.port} | {'✓' if server.restored else '✗'} | "
                     f"{server.mark_lsn or '-'} |")
    for name, server in record.servers.items():
        if server.log_tail:
            lines += ["", f"Last lines of {name}'s log:", "", "```", *server.log_tail, "```"]
    lines += ["", "## Prepared transactions settled", ""]
    lines += [f"- {r.server}/{r.database}: {r.action} `{r.gid}`" for r in record.resolved]
    if not record.resolved:
        lines.append("Not reached: the group did not come up." if record.error
                     else "None were in doubt at the mark.")
    lines += ["", "## Checks", ""]
    if record.error and not record.checks:
        lines.append("Not run: the group did not come up.")
    elif record.checks:
        lines += ["| | file:line | check | result |", "|---|---|---|---|"]
        lines += [f"| {'✓' if c.ok else '✗'} | {_cell(c.file)}:{c.line} | `{_cell(c.check)}` | "
                  f"{_cell(c.result)} |" for c in record.checks]
    else:
        lines.append("No checks were given (`--check-sql FILE`).")
    if record.cleanup_problems:
        lines += ["", "## Cleanup problems", ""]
        lines += [f"- {p}" for p in record.cleanup_problems]
    return "\n".join(lines) + "\n"
