"""The group's roles across failovers: the role-swapped config a failover writes, where it goes,
and whether a config describes roles a later failover replaced.

A config names two sites: `[site]` (its servers are the primaries) and `[dr_site]` (their
standbys). A failover makes the DR site production: the next generation of the config lists
the promoted servers as the group's servers under `[site]` with the DR site's name, and the old
production hosts as the DR site, under their own name — the site to rebuild. Names stay with
their sites across any number of swaps.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path

import psycopg

from markship.config.model import (
    Config,
    ServerSection,
    SiteSection,
    StandbySection,
    parse,
    to_toml,
)
from markship.dr.history import FailoverRecord
from markship.dr.standby import standby_conninfo
from markship.errors import ConfigError, MarkshipError
from markship.privatefile import write_private


def next_generation(config: Config, new_path: Path) -> Config:
    """The config with roles swapped: DR standbys as servers, old servers as the DR site."""
    if config.dr_site is None:
        raise MarkshipError("no [dr_site] in the config", "a role swap needs a DR site")
    servers, standbys = [], []
    for server in config.servers:
        standby = config.standby(server.name)
        if server.data_dir is None:
            raise MarkshipError(f"server {server.name} has no data_dir in the config",
                                "set data_dir: the old site's standby is rebuilt there")
        old = psycopg.conninfo.conninfo_to_dict(server.conninfo)
        servers.append(ServerSection(name=server.name,
                                     conninfo=standby_conninfo(config, server.name),
                                     data_dir=standby.data_dir, bin_dir=server.bin_dir))
        standbys.append(StandbySection(server=server.name, data_dir=server.data_dir,
                                       host=str(old.get("host") or "127.0.0.1"),
                                       port=int(str(old.get("port") or 5432))))
    swapped = config.model_copy(update={
        "servers": servers,
        "site": SiteSection(name=config.dr_site.name),
        "dr_site": config.dr_site.model_copy(update={"name": config.site.name,
                                                     "standbys": standbys})})
    # Validated exactly as a file read from disk would be.
    return parse(tomllib.loads(to_toml(swapped)), new_path)


def _roles(config: Config) -> tuple[object, ...]:
    """What makes two configs describe the same roles: the sites' names, each server's place
    and each standby's."""
    servers = tuple(sorted((s.name, tuple(sorted(psycopg.conninfo.conninfo_to_dict(
        s.conninfo).items())), str(s.data_dir)) for s in config.servers))
    standbys = tuple(sorted((s.server, str(s.data_dir), s.host, s.port)
                            for s in (config.dr_site.standbys if config.dr_site else [])))
    return (config.group.name, config.repository.location, config.site.name,
            config.dr_site.name if config.dr_site else None, servers, standbys)


def _base_stem(config: Config) -> tuple[Path, str]:
    assert config.source is not None
    stem = config.source.stem
    for site in (config.site.name, config.dr_site.name if config.dr_site else None):
        if site and stem.endswith(f".{site}"):
            return config.source.parent, stem[: -len(site) - 1]
    return config.source.parent, stem


def _read(path: Path) -> Config | None:
    try:
        return parse(tomllib.loads(path.read_text()), path)
    except (OSError, ValueError, ConfigError):
        return None


def write_generation(config: Config, explicit: Path | None) -> tuple[Config, bool]:
    """Write the role-swapped config and return it, with whether a file was written.

    `explicit`: the path given (--new-config). Otherwise: the file the group started from when
    it describes exactly these roles again (a return trip comes home to the operator's own
    file, comments and all), else `NAME.SITE.toml` beside the config. A different file already
    there is kept as `FILE.replaced-TIME`, never overwritten."""
    if explicit is None and config.source is None:
        raise MarkshipError("the config was not read from a file",
                            "pass --new-config PATH for the role-swapped config")
    assert config.dr_site is not None
    if explicit is not None:
        path = explicit
    else:
        folder, base = _base_stem(config)
        home = folder / f"{base}.toml"
        path = folder / f"{base}.{config.dr_site.name}.toml"
        probe = next_generation(config, home)
        found = _read(home) if home != config.source else None
        if found is not None and _roles(found) == _roles(probe):
            return found, False
    new = next_generation(config, path)
    found = _read(path) if path.exists() else None
    if found is not None and _roles(found) == _roles(new) and path != config.source:
        return found, False  # written by this failover before it was interrupted
    try:
        if path.exists():
            if path == config.source:
                raise MarkshipError(f"--new-config {path} is the config in use",
                                    "name another file for the role-swapped config")
            from markship.timefmt import utcnow

            os.replace(path, path.with_name(
                f"{path.name}.replaced-{utcnow().strftime('%Y%m%dT%H%M%SZ')}"))
        # It carries the servers' conninfo, passwords included: 0600, owned by the OS user
        # the new primaries' archive_command runs as.
        write_private(path, to_toml(new))
    except OSError as exc:
        raise MarkshipError(f"cannot write the role-swapped config {path}: {exc.strerror}",
                            "pass --new-config PATH in a folder the repository's os_user may "
                            "write") from None
    return new, True


def this_host() -> str:
    return socket.gethostname()


def superseded(config: Config, record: FailoverRecord | None) -> bool:
    """Whether `record` (the newest finished failover) made another site production than the
    one this config names: then the config describes roles of the past."""
    return (record is not None and record.from_site is not None
            and record.to_site is not None and record.from_site == config.site.name
            and record.to_site != config.site.name)


def successor(config: Config, record: FailoverRecord) -> Path | None:
    """The role-swapped config `record`'s failover wrote, when it is on this host and is this
    group's next generation (the record comes from the repository: nothing in it is taken on
    trust); None otherwise."""
    if record.new_config is None or record.host != this_host():
        return None
    path = Path(record.new_config)
    if not path.is_absolute():
        return None
    found = _read(path)
    if found is None or found.group.name != config.group.name or \
            found.repository.location != config.repository.location or \
            found.site.name != record.to_site:
        return None
    return path
