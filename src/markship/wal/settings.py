"""The few settings the WAL commands need, read without the full config model on the hot path.

PostgreSQL runs wal-push and wal-fetch once per 16 MB segment. Their settings come from the
spool's cache (see spool.cached_settings); the full pydantic model validates the file only when
it is new or changed, so the WAL path never acts on a config the CLI would refuse. The values
themselves always come from the validated model (`WalSettings.from_config`): no default is
repeated here.
"""

from __future__ import annotations

from markship.errors import ConfigError
from markship.repository.backends import open_repository

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from markship.config.model import Config, CopySection
    from markship.repository.base import Repository
    from markship.repository.copies import Copy
    from markship.repository.s3 import S3Location

    # A [[repository.copy]] as the cache keeps it: name, mode, path or url, endpoint, region,
    # credentials_file, ca_file, lease_seconds.
    CopyFields = tuple[str, str, str, str, str, str, str, float]


class WalSettings:
    """The few settings the WAL commands need, read without the full config model."""

    __slots__ = ("archive_queue_max", "ca_file", "catalog_key_file", "compression_level", "copies",
                 "credentials_file", "endpoint", "identity_file", "lease_seconds", "os_user",
                 "push_ahead", "recipient", "region", "repository", "servers")

    def __init__(self, repository: str, os_user: str, compression_level: int,
                 servers: frozenset[str], push_ahead: int, recipient: str = "",
                 identity_file: str = "", catalog_key_file: str = "", endpoint: str = "",
                 region: str = "", credentials_file: str = "", ca_file: str = "",
                 lease_seconds: float = 15.0, archive_queue_max: int = 0,
                 copies: tuple[CopyFields, ...] = ()) -> None:
        self.repository = repository  # a directory, or s3://bucket/prefix
        self.os_user = os_user
        self.compression_level = compression_level
        self.servers = servers
        self.push_ahead = push_ahead
        self.recipient = recipient  # "" when the repository is not encrypted
        self.identity_file = identity_file
        self.catalog_key_file = catalog_key_file
        self.endpoint = endpoint  # these for an S3 repository only
        self.region = region
        self.credentials_file = credentials_file
        self.ca_file = ca_file
        self.lease_seconds = lease_seconds
        # pg_wal protection (markship.wal.guard): bytes of WAL waiting beyond which wal-push
        # drops the oldest while the repository is unreachable; 0: never drop WAL
        self.archive_queue_max = archive_queue_max
        self.copies = copies  # [[repository.copy]] tables, in their order

    def fields(self) -> tuple[str, str, int, frozenset[str], int, str, str, str, str, str, str,
                              str, float, int, tuple[CopyFields, ...]]:
        return (self.repository, self.os_user, self.compression_level, self.servers,
                self.push_ahead, self.recipient, self.identity_file, self.catalog_key_file,
                self.endpoint, self.region, self.credentials_file, self.ca_file,
                self.lease_seconds, self.archive_queue_max, self.copies)

    def open_repository(self, retry: bool = True, make_root: bool = False) -> Repository:
        """The repository; with `retry` False, a failed S3 request is not tried again;
        `make_root`: a directory repository's missing folder is created (as by the CLI)."""
        return self._open(self.repository, self.endpoint, self.region, self.credentials_file,
                          self.ca_file, self.lease_seconds, retry, make_root)

    def open_copies(self, mode: str | None = None) -> list[Copy]:
        """The [[repository.copy]] repositories in their order (only those of `mode`)."""
        from markship.repository.copies import Copy

        return [Copy(name, kind, self._open(where, endpoint, region, credentials, ca, lease))
                for name, kind, where, endpoint, region, credentials, ca, lease in self.copies
                if mode is None or kind == mode]

    def reading_repository(self) -> Repository:
        """The repository for wal-fetch: the primary, with the copies behind it
        (markship.repository.fallback) when there are any."""
        primary = self.open_repository()
        if not self.copies:
            return primary
        from markship.repository.fallback import Fallback

        return Fallback(primary, [c.repo for c in self.open_copies()])

    def _open(self, location: str, endpoint: str, region: str, credentials_file: str,
              ca_file: str, lease_seconds: float, retry: bool = True,
              make_root: bool = False) -> Repository:
        where: str | S3Location = location
        if location.startswith("s3://"):
            from markship.repository.s3 import S3Location

            where = S3Location(location, endpoint, region, credentials_file, ca_file,
                               lease_seconds)
            if not retry:
                where.retries = 0
        if self.recipient:
            # The archiver never stops over the catalog key (see EncryptedFsRepository).
            return open_repository(where, [self.recipient], self.identity_file or None,
                                   self.catalog_key_file or None, strict_catalog=False,
                                   make_root=False)
        return open_repository(where, make_root=make_root)

    @classmethod
    def from_config(cls, config: Config) -> WalSettings:
        repo, encryption = config.repository, config.encryption
        return cls(repo.location, repo.os_user, repo.compression_level,
                   frozenset(s.name for s in config.servers), repo.push_ahead,
                   encryption.recipient if encryption else "",
                   str(encryption.identity_file or "") if encryption else "",
                   str(encryption.catalog_key_file or "") if encryption else "",
                   repo.endpoint or "", repo.region or "", str(repo.credentials_file or ""),
                   str(repo.ca_file or ""), repo.lease_seconds, int(repo.archive_queue_max or 0),
                   tuple(_copy_fields(c) for c in repo.copies))

    def check_server(self, server: str) -> None:
        if server not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ConfigError(f"unknown server {server!r} (configured: {known})",
                              "use a name from a [[server]] table of the config")


def _copy_fields(copy: CopySection) -> CopyFields:
    return (copy.name, copy.mode, copy.location, copy.endpoint or "", copy.region or "",
            str(copy.credentials_file or ""), str(copy.ca_file or ""), copy.lease_seconds)


def load_settings(config_path: str) -> WalSettings:
    """WalSettings of this config file: from the spool's cache when the file is unchanged."""
    from markship.wal import spool

    cached = spool.cached_settings(config_path)
    # A cache written by another markship version may lack fields: defaulting them would
    # act on a config the model never read that way (e.g. turn pg_wal protection off).
    if cached is not None and len(cached) == len(WalSettings.__slots__):
        try:
            return WalSettings(*cached)  # type: ignore[arg-type]
        except TypeError:
            pass  # written by another markship version
    # A new or changed config file is validated by the full model, exactly as every other
    # command validates it (pydantic costs ~0.15 s, paid once per change of the file, not per
    # segment): the WAL path must never act on a config the CLI would refuse.
    from markship.config import model as config

    settings = WalSettings.from_config(config.load(config_path))
    spool.cache_settings(config_path, settings.fields())
    return settings
