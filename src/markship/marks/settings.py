"""What a mark needs of the config, read without the full config model on `markship mark`'s
lean path: like markship.wal.settings, the full pydantic model validates the file once per
change of it and the values are kept in the spool's cache (private to the OS user: it holds
the servers' conninfos, as the config file does). No default is repeated here: every value
comes from the validated model (`MarkSettings.from_config`)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.config.model import Config
    from markship.wal.settings import WalSettings


BARRIER = "\0barrier"  # the barrier connection's key among the lean path's connections


class MarkSettings:
    """The group, its servers and the [marks] settings a mark is made with."""

    __slots__ = ("barrier_server", "barrier_timeout", "delivery", "group", "nice", "servers",
                 "stream_wait")

    def __init__(self, group: str, servers: tuple[tuple[str, str], ...], barrier_server: str,
                 barrier_timeout: float, delivery: str, stream_wait: float, nice: int) -> None:
        self.group = group
        self.servers = servers  # (name, conninfo) in the config's order
        self.barrier_server = barrier_server  # one of the servers' names
        self.barrier_timeout = barrier_timeout  # seconds
        self.delivery = delivery  # "stream" or "switch"
        self.stream_wait = stream_wait  # seconds
        self.nice = nice

    def fields(self) -> tuple[str, tuple[tuple[str, str], ...], str, float, str, float, int]:
        return (self.group, self.servers, self.barrier_server, self.barrier_timeout,
                self.delivery, self.stream_wait, self.nice)

    def conninfo(self, server: str) -> str:
        return dict(self.servers)[server]

    def lean_conninfos(self) -> dict[str, str]:
        """The connections a mark opens on the lean path: one per server, and a second one
        to the barrier server (under the key BARRIER)."""
        return {**dict(self.servers), BARRIER: self.conninfo(self.barrier_server)}

    @classmethod
    def from_config(cls, config: Config) -> MarkSettings:
        marks = config.marks
        return cls(config.group.name, tuple((s.name, s.conninfo) for s in config.servers),
                   config.barrier_server.name, marks.barrier_timeout, marks.delivery,
                   marks.stream_wait, marks.nice)


def load(config_path: str) -> tuple[MarkSettings, WalSettings]:
    """The mark's settings and the repository's (markship.wal.settings) of this config file:
    from the spool's cache while the file is unchanged, else validated by the full model
    (which raises ConfigError for a config every other command would refuse too)."""
    from markship.wal import spool
    from markship.wal.settings import WalSettings, load_settings

    cached = spool.cached_settings(config_path, "mark")
    if cached is not None and len(cached) == len(MarkSettings.__slots__):
        try:
            return MarkSettings(*cached), load_settings(config_path)  # type: ignore[arg-type]
        except TypeError:
            pass  # written by another markship version
    from markship.config import model

    config = model.load(config_path)
    settings = MarkSettings.from_config(config)
    spool.cache_settings(config_path, settings.fields(), "mark")
    wal = WalSettings.from_config(config)
    spool.cache_settings(config_path, wal.fields())
    return settings, wal
