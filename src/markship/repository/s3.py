"""Repository in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, …) through obstore.

The same contract as the directory backend (markship.repository.fs), kept without rename:

- An object is visible under its final key only once all of it is stored: large objects go up
  as a multipart upload that is completed only when the producer finished (a failure aborts it,
  so nothing is ever listed); small ones as one PUT.
- Create-only writes use a conditional PUT (If-None-Match: *): two writers of one key never
  both win, and a stored object is never replaced unless the caller asked for it.
- Objects whose name depends on their content (WAL segments carry their digest) are staged in
  memory (spilling to a local temp file past SPOOL_MEMORY) and put under their name at once.
- Locks are lease objects: written create-only, renewed by their holder every third of the
  lease, taken over (with a conditional write on the old one's ETag) only once expired — or at
  once when the holder ran on this host and its process is gone.

obstore is imported on first use: a config naming a directory never loads it.
"""

from __future__ import annotations

import io
import os

from markship.errors import (
    ConfigError,
    ConflictError,
    ObjectMissing,
    RepositoryError,
)
from markship.repository import layout, lease
from markship.repository.encrypted import Encrypted
from markship.repository.fs import AGE_MAGIC, Sink
from markship.repository.lease import Lease
from markship.repository.objects import ObjectInfo, StoredObject, TempObject
from markship.repository.s3stream import PIECE, ObjectReader, Upload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, BinaryIO

    from obstore.store import S3Credential

    from markship.repository.base import Readable, Writable

SPOOL_MEMORY = 32 * 1024 * 1024  # a staged object larger than this goes to a local temp file
CREDENTIALS_REFRESH = 15.0  # seconds between reads of the credentials file
# obstore asks its credential provider again once a credential has less than this left
# (object_store's token cache; measured with 0.12.1: 301 s → asked on every request, 330 s →
# not for 30 s), so expiries are given as this plus CREDENTIALS_REFRESH
OBSTORE_MIN_TTL = 300.0
CREDENTIAL_KEYS = {"aws_access_key_id": "access_key_id",
                   "aws_secret_access_key": "secret_access_key",
                   "aws_session_token": "session_token"}


class S3Location:
    """Where an S3 repository is: `s3://BUCKET[/PREFIX]` and how to reach it (plain values,
    cached by the WAL commands between runs). `retries`: how often a failed request is tried
    again (with backoff, within 30 s)."""

    __slots__ = ("ca_file", "credentials_file", "endpoint", "lease_seconds", "region",
                 "retries", "url")

    def __init__(self, url: str, endpoint: str = "", region: str = "",
                 credentials_file: str = "", ca_file: str = "",
                 lease_seconds: float = 15.0, retries: int = 4) -> None:
        self.url = url
        self.endpoint = endpoint
        self.region = region
        self.credentials_file = credentials_file
        self.ca_file = ca_file
        self.lease_seconds = lease_seconds
        self.retries = retries

    def bucket_and_prefix(self) -> tuple[str, str]:
        rest = self.url.removeprefix("s3://")
        bucket, _sep, prefix = rest.partition("/")
        return bucket, prefix.strip("/")


def read_credentials(path: str) -> dict[str, str]:
    """The access key (and secret, session token) in a credentials file: `KEY=VALUE` lines
    (AWS_ACCESS_KEY_ID=…, as an environment file) or the AWS shared-credentials format
    (`aws_access_key_id = …` under [default]). The file must be private to its owner."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"S3 credentials_file {path} cannot be read ({exc.strerror})",
                          "create it (mode 0600) readable by the repository's os_user") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"S3 credentials_file {path} is readable by other users "
                f"(mode {mode & 0o777:04o})",
                f"chmod 600 {path}: it holds the storage's secret key")
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except BaseException:
        try:  # noqa: SIM105
            os.close(fd)
        except OSError:
            pass
        raise
    found: dict[str, str] = {}
    section = "default"
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or section != "default":
            continue
        field = CREDENTIAL_KEYS.get(name.strip().lower())
        if field:
            found[field] = value.strip().strip("'\"")
    if "access_key_id" not in found or "secret_access_key" not in found:
        raise ConfigError(
            f"S3 credentials_file {path} names no access key and secret",
            "write AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines into it")
    return found


class FileCredentials:
    """obstore's credential provider for a credentials file, read again every
    CREDENTIALS_REFRESH seconds: a long-running process (the agent) takes rotated keys and
    renewed session tokens without a restart. A file that cannot be read then (being
    rewritten, say) keeps the last good keys, and is read again at the next refresh. The
    first read happens here: a missing or bad file is a ConfigError at once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.keys = read_credentials(path)
        self.problem: str | None = None  # why the last read again failed (None: it did not)
        self._fresh = True

    def __call__(self) -> S3Credential:
        from datetime import UTC, datetime, timedelta

        if not self._fresh:
            try:
                self.keys = read_credentials(self.path)
                self.problem = None
            except ConfigError as exc:  # the last good keys stay, until the next refresh
                self.problem = exc.message
        self._fresh = False
        return {"access_key_id": self.keys["access_key_id"],
                "secret_access_key": self.keys["secret_access_key"],
                "token": self.keys.get("session_token"),
                "expires_at": datetime.now(UTC) + timedelta(
                    seconds=OBSTORE_MIN_TTL + CREDENTIALS_REFRESH)}


def _first_line(exc: BaseException) -> str:
    """obstore's messages run over many lines (with a debug dump): the first, shortened."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "…"


class S3Repository:
    """Objects under `s3://BUCKET/PREFIX/`; keys as in the directory backend."""

    temp_prefix = ".tmp~"  # never written here; kept so listings match the directory backend

    def __init__(self, location: S3Location) -> None:
        self.where = location
        self.location = location.url
        self._store: Any = None
        self.credentials: FileCredentials | None = None  # with a credentials_file, once used

    # -- the connection ------------------------------------------------------------------------

    @property
    def store(self) -> Any:
        if self._store is None:
            from datetime import timedelta

            from obstore.store import S3Store

            bucket, prefix = self.where.bucket_and_prefix()
            config: dict[str, Any] = {"virtual_hosted_style_request": False}
            if self.where.endpoint:
                config["endpoint"] = self.where.endpoint
            if self.where.region:
                config["region"] = self.where.region
            provider = None
            if self.where.credentials_file:
                provider = self.credentials = FileCredentials(self.where.credentials_file)
            client: dict[str, Any] = {"connect_timeout": timedelta(seconds=5),
                                      "timeout": timedelta(seconds=120)}
            if self.where.endpoint.startswith("http://"):
                client["allow_http"] = True
            if self.where.ca_file:
                try:
                    with open(self.where.ca_file, "rb") as handle:
                        client["root_certificate"] = handle.read()
                except OSError as exc:
                    raise ConfigError(f"[repository] ca_file {self.where.ca_file} cannot be "
                                      f"read ({exc.strerror})",
                                      "point ca_file at the PEM certificate the endpoint "
                                      "presents (or its CA)") from None
            retry = {"max_retries": self.where.retries, "retry_timeout": timedelta(seconds=30),
                     "backoff": {"init_backoff": timedelta(milliseconds=100),
                                 "max_backoff": timedelta(seconds=5), "base": 2}}
            try:
                self._store = S3Store(bucket, prefix=prefix or None,
                                      config=config,  # type: ignore[arg-type]
                                      client_options=client,  # type: ignore[arg-type]
                                      retry_config=retry,  # type: ignore[arg-type]
                                      credential_provider=provider)
            except Exception as exc:
                raise ConfigError(f"[repository] {self.location}: {_first_line(exc)}",
                                  "check url, endpoint and region in the config") from None
        return self._store

    def _error(self, exc: BaseException, key: str, doing: str) -> Exception:
        """One clear error for a failed request (the message names no credential)."""
        from obstore import exceptions as s3errors

        if isinstance(exc, FileNotFoundError):
            if "NoSuchBucket" in str(exc):
                return RepositoryError(
                    f"bucket of {self.location} does not exist at "
                    f"{self.where.endpoint or 'the default endpoint'}",
                    "create the bucket, or correct [repository] url/endpoint")
            return ObjectMissing(f"object {key} is missing from the repository")
        if isinstance(exc, (s3errors.AlreadyExistsError, s3errors.PreconditionError)):
            return ConflictError(f"object {key} already exists in the repository")
        if isinstance(exc, (PermissionError, s3errors.PermissionDeniedError,
                            s3errors.UnauthenticatedError)):
            problem = self.credentials.problem if self.credentials else None
            return RepositoryError(
                f"S3 refused {doing} {key} in {self.location}: {_first_line(exc)}",
                f"{problem}: fix it, the keys read before are still in use" if problem else
                "check the credentials (credentials_file or AWS_* variables) and the "
                "bucket's policy for this user")
        return RepositoryError(
            f"S3 request failed {doing} {key} in {self.location}"
            f"{' (retried)' if self.where.retries else ''}: {_first_line(exc)}",
            "check that the endpoint is reachable and healthy, then retry")

    def _call(self, doing: str, key: str, function: Callable[..., Any], *args: Any,
              **kwargs: Any) -> Any:
        try:
            return function(self.store, *args, **kwargs)
        except (ConfigError, RepositoryError):
            raise
        except Exception as exc:
            raise self._error(exc, key, doing) from None

    # -- writing -------------------------------------------------------------------------------

    def _encoded(self, fill: Callable[[Writable], None], metadata: bool
                 ) -> Callable[[Writable], None]:
        """What is stored of an object `fill` writes (the Encrypted layer encrypts)."""
        return fill

    def write(self, key: str, source: Readable, *, overwrite: bool = False,
              metadata: bool = False) -> StoredObject:
        return self.write_by(key, lambda sink: _copy(source, sink), overwrite=overwrite,
                             metadata=metadata)

    def write_by(self, key: str, fill: Callable[[Writable], None], *, overwrite: bool = False,
                 metadata: bool = False, plain: bool = False) -> StoredObject:
        """Stream what `fill` writes into `key` as a multipart upload, completed only once
        `fill` returns (so a failure leaves nothing under `key`). `plain`: the bytes are
        stored as they come (already encoded)."""
        _check_key(key)
        if not overwrite and self.exists(key):
            raise ConflictError(f"object {key} already exists in the repository")
        if not plain:
            fill = self._encoded(fill, metadata)
        upload = Upload(self, key)
        sink = Sink(upload, hashed=True)  # type: ignore[arg-type]
        try:
            fill(sink)
        except BaseException as exc:
            upload.abort(exc)
            raise
        upload.finish()
        return StoredObject(key, sink.size, sink.digest.hexdigest())

    def write_stored(self, key: str, source: Readable, *, overwrite: bool = False
                     ) -> StoredObject:
        """Store `source` byte for byte under `key` (already encoded: a copy of an object of
        another repository with the same keys). Up to SPOOL_MEMORY in one conditional PUT
        (create-only), larger ones streamed as write_by() does."""
        import hashlib

        head = source.read(SPOOL_MEMORY + 1)
        if len(head) <= SPOOL_MEMORY:
            self._put(key, head, overwrite)
            return StoredObject(key, len(head), hashlib.sha256(head).hexdigest())

        def fill(sink: Writable) -> None:
            sink.write(head)
            _copy(source, sink)

        return self.write_by(key, fill, overwrite=overwrite, plain=True)

    def write_named(self, folder: str, source: Readable, name_for: Callable[[], str], *,
                    overwrite: bool = False, metadata: bool = False) -> StoredObject:
        return self.write_named_by(folder, lambda sink: _copy(source, sink), name_for,
                                   overwrite=overwrite, metadata=metadata)

    def write_named_by(self, folder: str, fill: Callable[[Writable], None],
                       name_for: Callable[[], str], *, overwrite: bool = False,
                       hashed: bool = True, metadata: bool = False) -> StoredObject:
        staged = self.stage(folder, fill, hashed=hashed, metadata=metadata)
        return staged.publish(name_for, overwrite=overwrite)

    def stage(self, folder: str, fill: Callable[[Writable], None], *,
              hashed: bool = True, metadata: bool = False) -> S3Staged:
        """`fill(sink)` into a local buffer (memory, then a temp file); publish() puts it
        under its name in one conditional request."""
        import tempfile

        fill = self._encoded(fill, metadata)
        buffer = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        try:
            sink = Sink(buffer, hashed)  # type: ignore[arg-type]
            fill(sink)
        except BaseException:
            buffer.close()
            raise
        return S3Staged(self, folder, buffer, sink)

    def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False,
                    metadata: bool = False) -> StoredObject:
        folder, _sep, name = key.rpartition("/")
        return self.write_named_by(folder + "/" if folder else "", lambda s: _write(s, data),
                                   lambda: name, overwrite=overwrite, metadata=metadata)

    def _put(self, key: str, data: bytes | BinaryIO, overwrite: bool) -> None:
        import obstore

        _check_key(key)
        mode = "overwrite" if overwrite else "create"
        self._call("writing", key, obstore.put, key, data, mode=mode, use_multipart=False)

    # -- reading -------------------------------------------------------------------------------

    def open_stored(self, key: str) -> BinaryIO:
        import obstore

        _check_key(key)
        result = self._call("reading", key, obstore.get, key)
        raw = ObjectReader(self, key, result)
        return io.BufferedReader(raw, buffer_size=256 * 1024)

    def open(self, key: str) -> BinaryIO:
        handle = self.open_stored(key)
        if handle.peek(len(AGE_MAGIC))[:len(AGE_MAGIC)] == AGE_MAGIC:  # type: ignore[attr-defined]
            handle.close()
            raise RepositoryError(
                f"object {key} is encrypted, but the config has no [encryption] section",
                "add [encryption] with the repository's recipient and identity_file")
        return handle

    def plaintext(self, stored: Readable, key: str) -> Readable:
        return stored

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def _head(self, key: str) -> dict[str, Any] | None:
        import obstore

        _check_key(key)
        try:
            return dict(self._call("looking up", key, obstore.head, key))
        except ObjectMissing:
            return None

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        meta = self._head(key)
        if meta is None:
            raise ObjectMissing(f"object {key} is missing from the repository")
        return int(meta["size"])

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        import obstore

        # obstore lists by whole path segments: list the folder, keep what starts with prefix.
        # A prefix inside a folder (e.g. one WAL segment's name) starts the listing after it
        # (S3's start-after) and stops past it: keys come in order.
        folder = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
        folder = folder.rstrip("/")
        offset = None if prefix.endswith("/") or not prefix else prefix
        try:
            for chunk in obstore.list(self.store, folder or None, offset=offset,
                                      chunk_size=1000):
                for meta in chunk:
                    key = meta["path"]
                    if offset is not None and not key.startswith(prefix) and key > prefix:
                        return
                    if key.startswith(prefix) and not _is_temp(key):
                        yield ObjectInfo(key, int(meta["size"]),
                                         meta["last_modified"].timestamp())
        except (ConfigError, RepositoryError):
            raise
        except Exception as exc:
            raise self._error(exc, prefix, "listing") from None

    def children(self, prefix: str) -> list[str]:
        import obstore

        folder = prefix.rstrip("/")
        listed = self._call("listing", prefix, obstore.list_with_delimiter, folder or None)
        names = {p.rstrip("/").rpartition("/")[2] for p in listed["common_prefixes"]}
        names.update(o["path"].rpartition("/")[2] for o in listed["objects"])
        return sorted(n for n in names if n and not n.startswith(self.temp_prefix))

    def delete(self, key: str) -> None:
        import obstore

        _check_key(key)
        try:  # noqa: SIM105 - contextlib stays off the WAL path
            self._call("deleting", key, obstore.delete, key)
        except ObjectMissing:
            pass

    def temp_objects(self) -> list[TempObject]:
        """None: an unfinished upload is never listed (S3 keeps its parts aside until it is
        completed or aborted; a bucket lifecycle rule removes abandoned ones)."""
        return []

    # -- locks and checks ----------------------------------------------------------------------

    def lock(self, name: str, purpose: str) -> Lease:
        return Lease(self, layout.lock_key(name), name, purpose, self.where.lease_seconds)

    def lock_holder(self, name: str) -> str | None:
        return lease.holder(self, layout.lock_key(name), self.where.lease_seconds)

    def flush(self, folder: str) -> None:
        return  # a put is durable once answered

    def check_writable(self) -> None:
        key = f"{layout.lock_key('probe')}-{os.urandom(6).hex()}"
        self._put(key, b"probe", overwrite=True)
        self.delete(key)


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/") or "//" in key:
        raise ValueError(f"invalid object key {key!r}")


def _is_temp(key: str) -> bool:
    return key.rpartition("/")[2].startswith(S3Repository.temp_prefix)


def _write(sink: Writable, data: bytes) -> None:
    sink.write(data)


def _copy(source: Readable, sink: Writable) -> None:
    while chunk := source.read(PIECE):
        sink.write(chunk)


class S3Staged:
    """An object's bytes held locally, waiting for their name (S3Repository.stage)."""

    def __init__(self, repo: S3Repository, folder: str, buffer: Any, sink: Sink) -> None:
        self.repo, self.folder, self.buffer, self.sink = repo, folder, buffer, sink

    def publish(self, name_for: Callable[[], str], *, overwrite: bool = False,
                sync: bool = True) -> StoredObject:
        try:  # a put is durable once answered: `sync` has nothing to add
            key = self.folder + name_for()
            self.buffer.seek(0)
            if self.sink.size <= SPOOL_MEMORY:
                self.repo._put(key, self.buffer.read(), overwrite)
            else:  # spilled to disk: streamed, as write_by() does
                buffer = self.buffer
                self.repo.write_by(key, lambda sink: _copy(buffer, sink), overwrite=overwrite,
                                   plain=True)
        finally:
            self.buffer.close()
        digest = self.sink.digest.hexdigest() if self.sink.hashed else ""
        return StoredObject(key, self.sink.size, digest)

    def stored_sha256(self) -> str:
        return str(self.sink.digest.hexdigest())

    def discard(self) -> None:
        self.buffer.close()


class EncryptedS3Repository(Encrypted, S3Repository):
    """An encrypted repository in S3-compatible object storage."""

    def __init__(self, location: S3Location, recipients: list[str],
                 identity_file: str | os.PathLike[str] | None,
                 catalog_key_file: str | os.PathLike[str] | None = None, *,
                 strict_catalog: bool = True) -> None:
        S3Repository.__init__(self, location)
        self._keys(recipients, identity_file, catalog_key_file, strict_catalog)
