"""The group configuration: TOML → a validated, frozen model (pydantic).

Validation errors name the key, the value found and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from markship import names
from markship.config import file
from markship.errors import ConfigError

# Names given in the config are repository names (markship.names) and more: lower case,
# no '.', at most 63 characters, as they also make environment variable names
# (failover clients) and stay readable in paths and logs.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ConfigName = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(names.validated)]

_UNIT_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _seconds(value: object) -> object:
    """'90s', '5min', '2h', '1d' or a bare number of seconds → seconds."""
    if not isinstance(value, str):
        return value
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", value)
    if found is None or found.group(2) not in _UNIT_SECONDS:
        raise ValueError("must be a duration such as 90s, 5min, 2h or 1d")
    return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def _absolute_path(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError("must be an absolute path")
    return value


AbsolutePath = Annotated[Path, AfterValidator(_absolute_path)]

# A length of time: a number of seconds, or a string with a unit (s, min, h, d).
Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupSection(_Section):
    name: ConfigName


# s3://BUCKET[/PREFIX]: S3 bucket naming rules (3-63 of a-z, 0-9, '.', '-'), a prefix of
# plain key segments.
S3_URL_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9_.=+-]+)*/?$"


class _Storage(_Section):
    """Where a repository is: `path` (a local or mounted directory) or `url` (S3-compatible
    object storage, with `endpoint`, `region`, `credentials_file`, `ca_file`)."""

    path: AbsolutePath | None = None
    url: Annotated[str, Field(pattern=S3_URL_PATTERN)] | None = None
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s/@]+(/[^\s@]*)?$")] | None = None
    region: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")] | None = None
    credentials_file: AbsolutePath | None = None
    ca_file: AbsolutePath | None = None
    # S3 locks are leases: a holder that died loses its lock after this many seconds.
    lease_seconds: Annotated[float, Field(ge=5, le=600)] = 15.0

    @model_validator(mode="after")
    def _one_location(self) -> _Storage:
        if (self.path is None) == (self.url is None):
            raise ValueError("set exactly one of path (a directory) and url "
                             "(s3://bucket/prefix)")
        if self.path is not None:
            extra = [k for k in ("endpoint", "region", "credentials_file", "ca_file")
                     if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong(s) to an S3 repository (url = "
                                 "\"s3://…\"), not to path")
        return self

    @property
    def location(self) -> str:
        """The directory or URL, as shown to the user (never with credentials)."""
        return str(self.path) if self.path is not None else str(self.url)

    @property
    def on_object_storage(self) -> bool:
        return self.url is not None


class CopySection(_Storage):
    """A second repository every object also lands in ([[repository.copy]]): `async` (the
    agent copies new objects within seconds) or `sync` (wal-push succeeds only once both
    hold the segment)."""

    name: ConfigName
    mode: Literal["async", "sync"] = "async"


class RepositorySection(_Storage):
    os_user: str = "postgres"
    compression_level: Annotated[int, Field(ge=1, le=19)] = 1
    push_ahead: Annotated[int, Field(ge=0, le=64)] = 8
    # With the repositories unreachable and more WAL than this waiting, wal-push lets
    # PostgreSQL recycle the oldest segments (recorded as a gap); None: never drop WAL.
    archive_queue_max: ByteSize | None = None
    copies: Annotated[list[CopySection], Field(alias="copy")] = []
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _copies(self) -> RepositorySection:
        names = [c.name for c in self.copies]
        if len(set(names)) != len(names):
            raise ValueError("two [[repository.copy]] tables have the same name")
        places = [self.location, *(c.location for c in self.copies)]
        if len(set(places)) != len(places):
            raise ValueError("a [[repository.copy]] names the repository itself or another "
                             "copy: each copy must be a different place")
        return self


class EncryptionSection(_Section):
    """Every object is encrypted to `recipient` (age); `identity_file` is needed to read.

    `catalog_key_file` (production hosts): an age identity that opens the catalog records
    only, never backups, WAL, file sets or dumps."""

    recipient: str
    identity_file: Path | None = None
    catalog_key_file: Path | None = None

    @field_validator("recipient")
    @classmethod
    def _age_recipient(cls, value: str) -> str:
        if not value.startswith("age1"):
            raise ValueError("must be an age public key (age1…), as printed by "
                             "`markship key create`")
        return value


class ServerSection(_Section):
    name: ConfigName
    conninfo: Annotated[str, Field(min_length=1)]
    data_dir: Path | None = None
    bin_dir: Path | None = None


class BackupSection(_Section):
    compression_level: Annotated[int, Field(ge=1, le=19)] = 1
    compress_workers: Annotated[int, Field(ge=0, le=64)] = 0
    archive_wait_seconds: Annotated[int, Field(ge=5)] = 120


class MarksSection(_Section):
    barrier_server: str | None = None
    barrier_timeout: Annotated[float, Field(gt=0, le=60)] = 2.0
    interval: Annotated[float, Field(ge=1)] = 30.0
    # How a mark's WAL reaches the repository: "stream" (the agent's pg_receivewal; falls
    # back to a WAL switch for a server without a receiver) or "switch" (always switch).
    delivery: Literal["stream", "switch"] = "stream"
    stream_wait: Annotated[float, Field(gt=0, le=30)] = 1.0
    # Where the receivers write when the repository is object storage (markship.marks.upload):
    # a local directory of the agent's host; None: /var/lib/markship/stream.
    stream_spool: AbsolutePath | None = None
    # Nice value of the agent's marking thread (markship.marks.priority); 0 leaves it alone.
    nice: Annotated[int, Field(ge=-20, le=19)] = -10


class ScheduleSection(_Section):
    """Full backups: 'daily at 01:30 Europe/Berlin'. The zone is always explicit (default UTC)."""

    frequency: Literal["hourly", "daily", "weekly"] = "daily"
    hour: Annotated[int, Field(ge=0, le=23)] = 1
    minute: Annotated[int, Field(ge=0, le=59)] = 0
    weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                     "sunday"] = "sunday"
    timezone: str = "UTC"
    force_full: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone: use an IANA name such as UTC or "
                             "Europe/Berlin") from None
        return value


class RetentionSection(_Section):
    days: Annotated[float, Field(gt=0)] = 14
    min_sets: Annotated[int, Field(ge=1)] = 2


class StandbySection(_Section):
    server: str
    data_dir: AbsolutePath
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)]
    socket_dir: Path | None = None
    # Where `standby create` puts the server's tablespaces on this host: "OLD=NEW" entries as
    # restore's --tablespace-map takes them ("*=/dir/{oid}" for all); else the original places.
    tablespace_map: list[str] = []

    @field_validator("tablespace_map")
    @classmethod
    def _map(cls, value: list[str]) -> list[str]:
        from markship.config.tablespacemap import parse_mapping
        from markship.errors import MarkshipError

        try:
            parse_mapping(value, source="tablespace_map entry")
        except MarkshipError as exc:
            raise ValueError(exc.message) from None
        return value

    def tablespaces(self) -> dict[str, str]:
        """The tablespace map as OLD → NEW."""
        from markship.config.tablespacemap import parse_mapping

        return parse_mapping(self.tablespace_map, source="tablespace_map entry")


class SiteSection(_Section):
    """The site whose servers are the group's primaries now. Its name and the DR site's are
    the operator's: a failover swaps the two sections' roles, never their names."""

    name: ConfigName = "production"


class DrSiteSection(_Section):
    name: ConfigName = "dr"
    # The agent switches WAL on a server whose standby would otherwise sit further behind
    # than this (None: never; each switch costs one WAL segment, like archive_timeout).
    max_replay_delay: Duration | None = None
    standbys: Annotated[list[StandbySection], Field(alias="standby")] = []
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FilesetSection(_Section):
    """Files captured with every backup set and whenever their content changes."""

    name: ConfigName
    paths: Annotated[list[Path], Field(min_length=1)]
    exclude: list[str] = []  # glob patterns matched against paths relative to each root

    @field_validator("paths")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"{path} must be an absolute path")
        return value


class DumpSection(_Section):
    """A database saved with pg_dump (a store that WAL shipping does not cover)."""

    name: ConfigName | None = None  # default SERVER-DATABASE
    server: str
    database: str
    schedule: str = "daily 03:00 UTC"  # "hourly :MM", "daily HH:MM ZONE", "weekly DAY HH:MM ZONE"

    @property
    def dump_name(self) -> str:
        return self.name or f"{self.server}-{self.database}"

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        from markship.config.schedule import parse_schedule
        from markship.errors import MarkshipError

        try:
            parse_schedule(value, "schedule")
        except MarkshipError as exc:
            raise ValueError(exc.one_line()) from None
        return value

    @model_validator(mode="after")
    def _usable_name(self) -> DumpSection:
        import re

        # fullmatch: re.match with '$' would let a trailing newline through
        if not (re.fullmatch(NAME_PATTERN.strip("^$"), self.dump_name)
                and names.is_name(self.dump_name)):
            raise ValueError(f"the dump name {self.dump_name!r} (from server and database) "
                             'cannot name repository objects: set name = "…" (a-z, 0-9, _, -)')
        return self


class FailoverSql(_Section):
    """A statement run after promotion in one database of one restored server."""

    server: str
    database: str = "postgres"
    statement: str


class FailoverClients(_Section):
    """Where to write the new connection settings for application hosts."""

    pg_service: Path | None = None
    env: Path | None = None
    json_file: Annotated[Path | None, Field(alias="json")] = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FailoverHook(_Section):
    command: list[str]
    timeout: Annotated[float, Field(gt=0)] = 60


class FailoverSection(_Section):
    sql: list[FailoverSql] = []
    clients: FailoverClients = FailoverClients()
    hooks: Annotated[list[FailoverHook], Field(alias="hook")] = []
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WebSection(_Section):
    """The agent's read-only HTTP server: the status page, /metrics and /api/status.
    Off unless `listen` is set."""

    listen: str | None = None  # "127.0.0.1:9187"
    auth: Literal["token", "basic", "none"] = "token"
    token_file: AbsolutePath | None = None
    basic_auth_file: AbsolutePath | None = None
    tls_cert: AbsolutePath | None = None
    tls_key: AbsolutePath | None = None
    refresh: Duration = 10.0  # seconds between two snapshots of the group

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            listen_address(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> WebSection:
        if self.auth == "token" and self.listen is not None and self.token_file is None:
            raise ValueError('auth = "token" needs token_file (a file holding the token, '
                             'mode 0600), or write auth = "basic" or auth = "none"')
        if self.auth == "basic" and self.listen is not None and self.basic_auth_file is None:
            raise ValueError('auth = "basic" needs basic_auth_file (lines user:hash, see '
                             "markship's README)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key (TLS), or neither (plain HTTP)")
        return self


def listen_address(value: str) -> tuple[str, int]:
    """`host:port` (`[::1]:9187` for an IPv6 address) → (host, port); ValueError otherwise."""
    found = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", value)
    if found is None:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9187 or [::1]:9187")
    host = found.group(1) or found.group(3)
    port = int(found.group(2) or found.group(4))
    if not 0 < port < 65536:
        raise ValueError("the port must be between 1 and 65535")
    return host, port


# A size in bytes: a number, or a string with a unit ("256MiB", "1GiB"); more than zero.
Size = Annotated[ByteSize, Field(gt=0)]


class CheckSection(_Section):
    """Thresholds of `markship check`, also the colours of the status page and the example
    alert rules. None: the default of markship.monitor.health (some derived from the rest of
    the config). A figure above its warning threshold is a warning, above its critical one
    critical."""

    rpo_warning: Duration | None = None
    rpo_critical: Duration | None = None
    archive_lag_warning: Duration | None = None  # a finished segment waiting this long
    archive_lag_critical: Duration | None = None
    archive_lag_bytes_warning: Size | None = None  # WAL written, not in the repository
    archive_lag_bytes_critical: Size | None = None
    backup_age_warning: Duration | None = None  # the newest restorable base backup's age
    backup_age_critical: Duration | None = None
    standby_lag_bytes_warning: Size | None = None  # archived WAL a standby has not replayed
    standby_lag_bytes_critical: Size | None = None

    @model_validator(mode="after")
    def _ordered(self) -> CheckSection:
        for figure in ("rpo", "archive_lag", "archive_lag_bytes", "backup_age",
                       "standby_lag_bytes"):
            warning = getattr(self, f"{figure}_warning")
            critical = getattr(self, f"{figure}_critical")
            if warning is not None and critical is not None and warning > critical:
                raise ValueError(f"{figure}_warning ({warning:g}) is above {figure}_critical "
                                 f"({critical:g}): the warning must come first")
        return self


class Config(_Section):
    """The whole group: servers, repository and how backups run."""

    group: GroupSection
    repository: RepositorySection
    servers: Annotated[list[ServerSection], Field(alias="server", min_length=1)]
    site: SiteSection = SiteSection()
    backup: BackupSection = BackupSection()
    marks: MarksSection = MarksSection()
    schedule: ScheduleSection = ScheduleSection()
    retention: RetentionSection = RetentionSection()
    dr_site: DrSiteSection | None = None
    failover: FailoverSection = FailoverSection()
    encryption: EncryptionSection | None = None
    filesets: Annotated[list[FilesetSection], Field(alias="fileset")] = []
    dumps: Annotated[list[DumpSection], Field(alias="dump")] = []
    web: WebSection = WebSection()
    check: CheckSection = CheckSection()
    source: Path | None = Field(default=None, exclude=True)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for server in self.servers:
            if server.name in seen:
                raise ValueError(f"server name {server.name!r} is used twice")
            seen.add(server.name)
        if self.dr_site is not None:
            covered = [s.server for s in self.dr_site.standbys]
            for name in covered:
                if name not in seen:
                    raise ValueError(f"dr_site.standby server {name!r} is not a configured "
                                     "server name")
            if len(set(covered)) != len(covered):
                raise ValueError("two dr_site.standby entries replace the same server")
        for item in self.failover.sql:
            if item.server not in seen:
                raise ValueError(f"failover.sql server {item.server!r} is not a configured "
                                 "server name")
        if self.marks.barrier_server is not None and self.marks.barrier_server not in seen:
            raise ValueError(f"marks.barrier_server {self.marks.barrier_server!r} is not a "
                             "configured server name")
        if self.dr_site is not None and self.dr_site.name == self.site.name:
            raise ValueError(f"[site] and [dr_site] are both named {self.site.name!r}: give each "
                             "side its own name (a failover swaps their roles by name)")
        fileset_names = [f.name for f in self.filesets]
        if len(set(fileset_names)) != len(fileset_names):
            raise ValueError("two [[fileset]] tables have the same name")
        for dump in self.dumps:
            if dump.server not in seen:
                raise ValueError(f"dump server {dump.server!r} is not a configured server name")
        dump_names = [d.dump_name for d in self.dumps]
        if len(set(dump_names)) != len(dump_names):
            raise ValueError("two [[dump]] tables have the same name (set name = \"…\")")
        return self

    @property
    def barrier_server(self) -> ServerSection:
        name = self.marks.barrier_server
        return self.server(name) if name else self.servers[0]

    def server(self, name: str) -> ServerSection:
        """The server called `name`; raise ConfigError listing the known names."""
        for server in self.servers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.servers)
        raise ConfigError(f"unknown server {name!r} (configured: {known})",
                          "use a name from a [[server]] table of the config")

    def standby(self, server: str) -> StandbySection:
        """The DR-site standby replacing `server`; ConfigError when there is none."""
        for standby in self.dr_site.standbys if self.dr_site else []:
            if standby.server == server:
                return standby
        raise ConfigError(f"no [[dr_site.standby]] for server {server!r}",
                          "add one with server, data_dir, host and port")

    def select(self, names: tuple[str, ...] | list[str]) -> list[ServerSection]:
        return [self.server(n) for n in names] if names else list(self.servers)


_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it or check its spelling",
    "string_pattern_mismatch": "use lower-case letters, digits, '-' and '_'",
}


def _describe(error: Any) -> str:
    loc = list(error["loc"])
    if loc and loc[0] in ("server", "dump", "fileset"):  # arrays of tables
        loc[0] = f"[[{loc[0]}]]"
        if len(loc) > 1 and isinstance(loc[1], int):
            loc[1] = f"#{loc[1] + 1}"
    key = ".".join(str(part) for part in loc) or "(top level)"
    message = error["msg"]
    fix = _FIXES.get(error["type"], "correct the value")
    if error["type"] == "missing":
        return f"key {key} is missing: {fix}"
    shown = error.get("input")
    value = f" (found {shown!r})" if not isinstance(shown, dict | list) else ""
    return f"key {key}{value}: {message}: {fix}"


def parse(raw: dict[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming the first bad key."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{_describe(errors[0])}{more}") from None
    return config.model_copy(update={"source": source})


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Locate, read and validate the configuration file."""
    path = file.locate(explicit)
    return parse(file.read(path), Path(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        import json

        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(prefix: str, table: dict[str, Any], out: list[str]) -> None:
    scalars = {k: v for k, v in table.items()
               if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                    and isinstance(v[0], dict))}
    if scalars or not prefix:
        if prefix:
            out.append(f"\n[{prefix}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _toml_table(name, value, out)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out.append(f"\n[[{name}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items()
                           if not isinstance(v, dict))
                for k, v in item.items():
                    if isinstance(v, dict):
                        _toml_table(f"{name}.{k}", v, out)


def to_toml(config: Config) -> str:
    """The configuration as a TOML document that `load` reads back to an equal model."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True,
                             exclude={"source"})
    out: list[str] = ["# written by markship"]
    _toml_table("", data, out)
    return "\n".join(out) + "\n"
