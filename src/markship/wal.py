"""WAL archiving: `wal-push` (archive_command) and `wal-fetch` (restore_command).

PostgreSQL runs these once per 16 MB segment, so this module imports only the standard library,
zstandard and the repository; the few settings it needs come from the spool's cache, and the
full pydantic model validates the config only when the file is new or changed.

Contract with PostgreSQL:
- wal-push exits 0 only once the file is durably stored; pushing the same content again also
  exits 0; different content under an archived name exits 1 and keeps the stored object.
- wal-fetch exits 0 with the file at DEST and 1 quietly when it is not archived (PostgreSQL
  then looks elsewhere or ends recovery). Every other failure exits 126 with one line: a
  corrupt or foreign object, a key that does not open it, an unreadable or absent repository,
  a bad config, even a bug. PostgreSQL reads any exit below 126 as "not archived" and would
  end recovery there and promote, silently short of committed WAL; 126 and above make it stop
  recovery with an error instead, so the operator fixes the cause and starts it again.
"""

from __future__ import annotations

import os

from markship import walsum
from markship.errors import (
    ConfigError,
    ConflictError,
    CorruptObject,
    MarkshipError,
    ObjectMissing,
    RepositoryError,
)
from markship.lsn import (
    WAL_HEADER_BYTES,
    Segment,
    parse_segment_name,
    wal_file_kind,
    wal_header_problem,
)
from markship.repository import layout, open_repository

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from collections import deque
    from collections.abc import Iterator
    from typing import BinaryIO

    from markship.config import Config
    from markship.repository import FsRepository, Repository
    from markship.repository.base import Writable

# 256 KiB: a fresh process reading 1 MiB chunks spent twice as long faulting in new heap
# pages as reading; smaller chunks reuse the same memory.
CHUNK = 256 * 1024
EXIT_FATAL = 126  # restore_command: stop recovery rather than take this as the end of WAL


class WalSettings:
    """The few settings the WAL commands need, read without the full config model."""

    __slots__ = ("catalog_key_file", "compression_level", "identity_file", "os_user",
                 "push_ahead", "recipient", "repository_path", "servers")

    def __init__(self, repository_path: str, os_user: str, compression_level: int,
                 servers: frozenset[str], push_ahead: int, recipient: str = "",
                 identity_file: str = "", catalog_key_file: str = "") -> None:
        self.repository_path = repository_path
        self.os_user = os_user
        self.compression_level = compression_level
        self.servers = servers
        self.push_ahead = push_ahead
        self.recipient = recipient  # "" when the repository is not encrypted
        self.identity_file = identity_file
        self.catalog_key_file = catalog_key_file

    def fields(self) -> tuple[str, str, int, frozenset[str], int, str, str, str]:
        return (self.repository_path, self.os_user, self.compression_level, self.servers,
                self.push_ahead, self.recipient, self.identity_file, self.catalog_key_file)

    def open_repository(self) -> FsRepository:
        if self.recipient:
            # The archiver never stops over the catalog key (see EncryptedFsRepository).
            return open_repository(self.repository_path, [self.recipient],
                                   self.identity_file or None, self.catalog_key_file or None,
                                   strict_catalog=False)
        return open_repository(self.repository_path)

    @classmethod
    def from_config(cls, config: Config) -> WalSettings:
        repo, encryption = config.repository, config.encryption
        return cls(str(repo.path), repo.os_user, repo.compression_level,
                   frozenset(s.name for s in config.servers), repo.push_ahead,
                   encryption.recipient if encryption else "",
                   str(encryption.identity_file or "") if encryption else "",
                   str(encryption.catalog_key_file or "") if encryption else "")

    def check_server(self, server: str) -> None:
        if server not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise ConfigError(f"unknown server {server!r} (configured: {known})",
                              "use a name from a [[server]] table of the config")


def load_settings(config_path: str) -> WalSettings:
    """WalSettings of this config file: from the spool's cache when the file is unchanged."""
    from markship import spool

    cached = spool.cached_settings(config_path)
    if cached is not None:
        try:
            return WalSettings(*cached)  # type: ignore[arg-type]
        except TypeError:
            pass  # written by another markship version
    # A new or changed config file is validated by the full model, exactly as every other
    # command validates it (pydantic costs ~0.15 s, paid once per change of the file, not per
    # segment): the WAL path must never act on a config the CLI would refuse.
    from markship import config

    settings = WalSettings.from_config(config.load(config_path))
    spool.cache_settings(config_path, settings.fields())
    return settings


def find_archived(repo: Repository, server: str, wal_name: str) -> list[tuple[str, str]]:
    """(key, content digest) of every stored copy of `wal_name` (normally zero or one)."""
    folder = layout.wal_dir(server, wal_name)
    found = []
    for child in repo.children(folder):
        if child.startswith(wal_name + "-"):
            parsed = layout.split_wal_key(child)
            if parsed and parsed[0] == wal_name:
                found.append((folder + child, parsed[1]))
    return found


def push(repo: Repository, server: str, path: str, compression_level: int = 1) -> bool:
    """Archive one WAL file. True when stored now, False when an identical copy was there.

    Raises ConflictError when a different file is archived under the same name.
    """
    from markship import _zstd

    zstandard = _zstd.load()
    name = os.path.basename(path)
    kind = wal_file_kind(name)  # ValueError for names PostgreSQL never archives
    existing = find_archived(repo, server, name)
    if existing:  # a re-push (after a crash) or a clash: compare contents
        _same_or_conflict(server, name, path, "", existing)
        return False
    compressor = zstandard.ZstdCompressor(level=compression_level, write_checksum=True,
                                          threads=-1)
    with _MappedSegment(path) as segment:
        def fill(sink: Writable) -> None:
            with compressor.stream_writer(sink, size=segment.size, closefd=False) as packer:
                for piece in segment.pieces():
                    with piece:  # released at once, also when the write fails
                        packer.write(piece)

        try:
            stored = repo.write_named_by(
                layout.wal_dir(server, name), fill,
                lambda: layout.wal_key(server, name, segment.digest()).rsplit("/", 1)[1],
                hashed=False,  # the name carries the content's digest
                # .backup and .history files are small facts the catalog needs (backup stop
                # points, timeline switches): production hosts read them with the catalog key
                metadata=kind in ("backup", "history"))
        except ConflictError:
            return False  # a concurrent push of the same content won the race
        digest = segment.digest()
    others = [(k, d) for k, d in find_archived(repo, server, name) if k != stored.key]
    if others:  # another push of this name landed meanwhile
        try:
            _same_or_conflict(server, name, path, digest, others)
        finally:
            repo.delete(stored.key)
    return True


class _MappedSegment:
    """A WAL file mapped into memory and hashed by a second thread while it is compressed.

    The file is read once, with no copy: zstd compresses straight from the mapping on every
    core (threads=-1) while the other thread hashes the same pages (markship.walsum; BLAKE3
    releases the GIL). That thread also loads the hash module while the first chunks
    compress. _thread and mmap, not threading: they cost nothing to import.
    """

    PIECE = 1 << 20  # zstd's worker threads take 1 MiB slices better than 256 KiB ones

    def __init__(self, path: str) -> None:
        import _thread
        import mmap

        with open(path, "rb", buffering=0) as raw:
            self.size = os.fstat(raw.fileno()).st_size
            self._map = mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ,
                                  flags=mmap.MAP_SHARED | mmap.MAP_POPULATE) \
                if self.size else None
        self._view = memoryview(self._map if self._map is not None else b"")
        self._hex = ""
        self._failure: BaseException | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._hash, ())

    def _hash(self) -> None:
        try:
            digest = walsum.ContentHash()
            for piece in self.pieces():
                with piece:
                    digest.update(piece)
            self._hex = digest.result()
        except BaseException as exc:  # handed to the caller of digest()
            self._failure = exc
        finally:
            self._done.release()

    def pieces(self) -> Iterator[memoryview]:
        for start in range(0, self.size, self.PIECE):
            yield self._view[start:start + self.PIECE]

    def digest(self) -> str:
        """The file's content digest (markship.walsum), once the hashing thread is done."""
        if self._done.acquire():
            self._done.release()
        if self._failure is not None:
            raise self._failure
        return self._hex

    def __enter__(self) -> _MappedSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.digest()  # the thread must be done with the mapping before it goes
        except BaseException:
            if exc[0] is None:
                raise
        self._view.release()
        if self._map is not None:
            try:  # noqa: SIM105 - contextlib is one import too many on this path
                self._map.close()
            except BufferError:
                pass  # a slice is still referenced (by a traceback): unmapped when freed


def claim_ahead(server: str, path: str, limit: int, spool_for: str) -> dict[str, int]:
    """The next ready WAL files after `path` (at most `limit`) that nobody pushed or claimed
    yet, claimed now (markship.spool.claim): name → claim descriptor."""
    from collections import deque

    from markship import spool

    folder = spool.spool_dir(spool_for, server)
    name = os.path.basename(path)
    ready = spool.ready_files(path)
    spool.forget_except(folder, set(ready))
    return _claim(folder, os.path.dirname(path), deque(n for n in ready if n > name), limit)


def _claim(folder: str, directory: str, names: deque[str], limit: int) -> dict[str, int]:
    """Claim up to `limit` of `names` (taken from the left) not pushed or claimed yet."""
    from markship import spool

    claims: dict[str, int] = {}
    while names and len(claims) < limit:
        wal_name = names.popleft()
        wal_path = os.path.join(directory, wal_name)
        if spool.already_pushed(folder, wal_path):
            continue
        fd = spool.claim(folder, wal_name)
        if fd is None:
            continue  # another pusher has it (or the spool is not ours alone)
        if spool.already_pushed(folder, wal_path):  # finished while we looked
            spool.let_go(folder, wal_name, fd)
            continue
        claims[wal_name] = fd
    return claims


def push_ahead(repo: Repository, server: str, path: str, settings: WalSettings,
               spool_for: str, claims: dict[str, int]) -> int:
    """Push the claimed WAL files two at a time and leave a marker for each, so the archiver's
    call for it returns at once; as each one is done, claim the next ready file, so that
    `push_ahead` files stay claimed ahead of the archiver until none is left (the ready list
    is read again only when the names read before are used up). Failures are left for the
    archiver's own calls to report. Returns how many files were pushed."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from markship import spool

    folder = spool.spool_dir(spool_for, server)
    directory = os.path.dirname(path)

    def one(wal_name: str, fd: int) -> bool:
        wal_path = os.path.join(directory, wal_name)
        try:
            push(repo, server, wal_path, settings.compression_level)
            spool.mark_pushed(folder, wal_path)
        except (MarkshipError, OSError, ValueError):
            return False
        finally:
            spool.let_go(folder, wal_name, fd)
        return True

    pushed = 0
    last = max(claims)
    names: deque[str] = deque()
    with ThreadPoolExecutor(max_workers=2) as pool:
        running: set[Future[bool]] = {pool.submit(one, n, fd) for n, fd in sorted(claims.items())}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            pushed += sum(future.result() for future in done)
            if not names:
                names.extend(n for n in spool.ready_files(path) if n > last)
            more = _claim(folder, directory, names, settings.push_ahead - len(running))
            if more:
                last = max(last, *more)
                running |= {pool.submit(one, n, fd) for n, fd in sorted(more.items())}
    return pushed


def push_ahead_in_background(repo: Repository, server: str, path: str,
                             settings: WalSettings, spool_for: str) -> None:
    """When PostgreSQL has fallen behind (a backlog of ready WAL files), push the next ones in
    a background process while this call pushes its own.

    PostgreSQL runs archive_command for one file at a time. The files after this one are
    claimed here, then a forked child (its own session, no terminal, stdio on /dev/null)
    pushes them while this process pushes `path` and exits; the archiver's call for a
    claimed file returns at once if it is pushed, or waits for its pusher to let go
    (spool.pushed_or_waited), and pushes the file itself if no marker came (the pusher
    failed or was killed: the kernel drops its locks). So the process starts of those calls
    overlap with the compression of the files after them."""
    try:
        claims = claim_ahead(server, path, settings.push_ahead, spool_for)
    except OSError:
        return  # e.g. /var/tmp full or not writable: the archiver's calls push one by one
    if not claims:
        return
    try:
        child = os.fork()
    except OSError:  # no process to spare: the same
        child = -1
    if child == 0:  # the child: claims are inherited, stays single-threaded until here
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for stdio in (0, 1, 2):
                os.dup2(devnull, stdio)
            push_ahead(repo, server, path, settings, spool_for, claims)
        finally:
            os._exit(0)
    from markship import spool

    folder = spool.spool_dir(spool_for, server)
    for name, fd in claims.items():
        if child > 0:
            os.close(fd)  # the child holds the locks now
        else:
            spool.let_go(folder, name, fd)


def _same_or_conflict(server: str, name: str, path: str, digest: str,
                      existing: list[tuple[str, str]]) -> None:
    """Raise ConflictError unless every stored copy holds the content of `path` (whose
    digest is `digest`, or "" when not computed); each is compared in its own algorithm."""
    for _key, stored_digest in existing:
        mine = digest if _same_kind(digest, stored_digest) else walsum.of_file(path, stored_digest)
        if stored_digest != mine:
            raise ConflictError(
                f"{name} of server {server} is already archived with different content "
                f"(stored digest {stored_digest[:15]}…, new {mine[:15]}…); the stored copy "
                "is kept",
                "two clusters may be archiving under one server name: check archive_command "
                "on each server and markship status",
            )


def _same_kind(digest: str, other: str) -> bool:
    return bool(digest) and digest.startswith(walsum.BLAKE3) == other.startswith(walsum.BLAKE3)


def open_archived(repo: Repository, server: str, wal_name: str) -> tuple[BinaryIO, str]:
    """A reader of the uncompressed WAL file and its expected digest (markship.walsum).

    Raises ObjectMissing when it is not archived.
    """
    from markship import _zstd

    zstandard = _zstd.load()
    found = find_archived(repo, server, wal_name)
    if not found:
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    if len(found) > 1:
        raise CorruptObject(f"{wal_name} of server {server} is archived more than once",
                            "run markship verify and remove the wrong copy")
    key, digest = found[0]
    stored = repo.open(key)
    return zstandard.ZstdDecompressor().stream_reader(stored, closefd=True), digest


def _mark_points(repo: Repository, key: str,
                 servers: frozenset[str]) -> dict[str, tuple[str, str]] | None:
    """server → (WAL segment, delivery) of a mark record, read without pydantic; None if
    unreadable or damaged. Repository data is untrusted: every server must be one of
    `servers` (the config's) and every WAL file a segment name, or the record is skipped."""
    import hashlib
    import json

    try:
        envelope = json.loads(repo.read_bytes(key))
        body = envelope["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(canonical).hexdigest() != envelope["sha256"]:
            return None
        delivery = body.get("delivery") or {}
        points = {server: (str(point["wal_file"]), str(delivery.get(server, "switch")))
                  for server, point in body["points"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, MarkshipError):
        return None
    try:
        if not points or not set(points) <= servers or any(
                wal_file_kind(wal_file) != "segment" for wal_file, _how in points.values()):
            return None
    except ValueError:  # not a WAL file name at all
        return None
    return points


def standby_ceiling(repo: Repository, server: str, floor: str | None,
                    servers: frozenset[str]) -> Segment | None:
    """The newest segment a DR-site standby may replay.

    That is the segment *before* the one holding the newest complete group mark: the mark's
    own segment also holds WAL written after the mark, and a standby that replayed it could no
    longer stop at the mark. `floor` (the base backup's last segment) always stays allowed so a
    new standby can reach consistency. None: nothing is allowed beyond the floor. `servers`:
    the group's, as the config names them (a mark record naming others is skipped).
    """
    ceiling: Segment | None = None
    names = sorted((n for n in repo.children("marks/") if n.endswith(".json")), reverse=True)
    for name in names[:100]:
        points = _mark_points(repo, "marks/" + name, servers)
        if not points or server not in points:
            continue
        if all(_delivered(repo, s, wal_file, how) for s, (wal_file, how) in points.items()):
            holding = parse_segment_name(points[server][0])
            ceiling = Segment(holding.timeline, holding.number - 1)
            break
    if floor:
        floor_segment = parse_segment_name(floor)
        if ceiling is None or floor_segment > ceiling:
            ceiling = floor_segment
    return ceiling


def _delivered(repo: Repository, server: str, wal_file: str, delivery: str) -> bool:
    if find_archived(repo, server, wal_file):
        return True
    return delivery == "stream" and streamed_key(repo, server, wal_file, True) is not None


def streamed_key(repo: Repository, server: str, wal_name: str,
                 allow_partial: bool) -> str | None:
    """The stream-folder key holding `wal_name` (see markship.stream): the whole file, else
    (if allowed) the partial one; None when neither exists."""
    if len(wal_name) != 24:
        return None
    whole = layout.stream_prefix(server) + wal_name
    if repo.exists(whole):
        return whole
    if allow_partial and repo.exists(whole + layout.STREAM_PARTIAL):
        return whole + layout.STREAM_PARTIAL
    return None


def fetch_streamed(repo: Repository, server: str, wal_name: str, dest: str,
                   allow_partial: bool) -> None:
    """Copy a segment that is not archived yet from the stream folder to `dest`.

    A partial segment is zero-padded to full size: recovery reads what was received and
    treats the padding as the end of WAL. Raises ObjectMissing when there is no copy.
    """
    key = streamed_key(repo, server, wal_name, allow_partial)
    if key is None:
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    folder, name = os.path.split(dest)
    temp = os.path.join(folder, f".{name}.markship-{os.getpid()}")
    head = Head()
    try:
        # Streamed files are pg_receivewal's own (never encrypted: streaming is off then).
        with repo.open_stored(key) as source, open(temp, "wb") as out:
            while chunk := source.read(CHUNK):
                head.take(chunk)
                out.write(chunk)
    except ObjectMissing:
        _discard(temp)  # archived and pruned meanwhile: the caller looks again
        raise
    except BaseException:
        _discard(temp)
        raise
    if key.endswith(layout.STREAM_PARTIAL) and not head.data.strip(b"\0"):
        # The agent lays the receiver's next segment out ahead, zero-filled: nothing of this
        # segment has been received yet.
        _discard(temp)
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    problem = wal_header_problem(head.data, wal_name)
    if problem is not None:
        _discard(temp)
        raise CorruptObject(f"streamed copy {key} is not WAL file {wal_name} ({problem})",
                            "run markship verify; this WAL must not be replayed")
    os.replace(temp, dest)


class Head:
    """The first bytes of a stream, gathered from its chunks (for the WAL page header)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def take(self, chunk: bytes) -> None:
        if len(self.data) < WAL_HEADER_BYTES:
            self.data += bytes(chunk[:WAL_HEADER_BYTES - len(self.data)])


def _discard(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is one import too many on this path
        os.unlink(path)
    except FileNotFoundError:
        pass


def fetch(repo: Repository, server: str, wal_name: str, dest: str) -> None:
    """Restore one archived WAL file to `dest`, checking its digest before it appears there.

    Raises ObjectMissing when not archived, CorruptObject when the stored copy is damaged.
    """
    from markship import _zstd

    zstandard = _zstd.load()
    reader, expected = open_archived(repo, server, wal_name)
    folder, name = os.path.split(dest)
    temp = os.path.join(folder, f".{name}.markship-{os.getpid()}")
    digest = walsum.ContentHash(expected)
    head = Head()
    try:
        with reader, open(temp, "wb") as out:
            while chunk := reader.read(CHUNK):
                head.take(chunk)
                digest.update(chunk)
                out.write(chunk)
    except zstandard.ZstdError as exc:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} cannot be decompressed "
                            f"({exc})", "run markship verify; restore from another copy") from None
    except BaseException:
        _discard(temp)
        raise
    if digest.result() != expected:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} fails its checksum",
                            "run markship verify; this WAL must not be replayed")
    # The digest in the object's name only proves the object is intact; the page header
    # proves it is this segment (a copy of another segment stored under this name would pass
    # the digest and be replayed as the wrong WAL).
    problem = wal_header_problem(head.data, wal_name)
    if problem is not None:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} is not that WAL file "
                            f"({problem})", "run markship verify; this WAL must not be replayed")
    os.replace(temp, dest)


def _parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    server: str | None = None
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--server" and i + 1 < len(argv):
            server = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--server="):
            server = arg.split("=", 1)[1]
        else:
            positional.append(arg)
        i += 1
    return server, positional


def main(command: str, argv: list[str], config: str | None) -> int:
    """Entry point of `markship wal-push` / `markship wal-fetch` (lean path): the exit status
    PostgreSQL acts on. For wal-fetch only "not archived" may exit below 126 (see the module
    docstring); every failure prints one line."""
    import sys

    fetching = command == "wal-fetch"
    try:
        return _run(command, argv, config)
    except ObjectMissing as exc:
        if fetching:
            return 1  # not archived (yet): PostgreSQL expects a quiet failure
        line, code = exc.one_line(), 1
    except MarkshipError as exc:
        line, code = exc.one_line(), exc.exit_code
    except ValueError as exc:  # a file name PostgreSQL never archives
        line, code = str(exc), 2
    except OSError as exc:  # outside the repository (e.g. DEST not writable)
        line = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        code = 1
    except BaseException as exc:  # a bug must not read as "not archived" either
        if isinstance(exc, SystemExit):
            raise
        line, code = f"unexpected {type(exc).__name__}: {exc}", 1
    print(f"markship {command}: error: {line}", file=sys.stderr)
    return EXIT_FATAL if fetching else code


def _run(command: str, argv: list[str], config: str | None) -> int:
    from markship import configfile, osuser

    # Hand-parsed: argparse alone costs ~20 ms of start-up, paid once per WAL segment.
    usage = (f"usage: markship {command} --server NAME "
             + ("PATH" if command == "wal-push" else "[--standby [--floor SEGMENT]] SEGMENT DEST"))
    standby = "--standby" in argv
    floor: str | None = None
    if "--floor" in argv:
        at = argv.index("--floor")
        floor = argv[at + 1] if at + 1 < len(argv) else None
        argv = argv[:at] + argv[at + 2:]
    argv = [a for a in argv if a != "--standby"]
    server, positional = _parse_args(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if server is None or len(positional) != (1 if command == "wal-push" else 2):
        raise ConfigError(f"wrong arguments {argv!r}", usage)
    config_path = configfile.locate(config)
    settings = load_settings(config_path)
    settings.check_server(server)
    osuser.switch_to(settings.os_user)
    repo = settings.open_repository()
    if command == "wal-push":
        path = positional[0]
        if not os.path.isfile(path):
            raise ObjectMissing(f"WAL file {path} does not exist",
                                "archive_command must pass %p, the path of the file")
        if settings.push_ahead > 0:
            push_ahead_in_background(repo, server, path, settings, spool_for=config_path)
        push(repo, server, path, settings.compression_level)
        return 0
    name, dest = positional
    if standby and wal_file_kind(name) in ("segment", "partial"):
        ceiling = standby_ceiling(repo, server, floor, settings.servers)
        if ceiling is None or parse_segment_name(name[:24]) > ceiling:
            return 1  # withheld until the next group mark completes
    try:
        fetch(repo, server, name, dest)
    except ObjectMissing:
        # Not archived yet: the agent's WAL receiver may hold it. A standby gets whole
        # segments only (a partial one would end its replay early).
        try:
            fetch_streamed(repo, server, name, dest, allow_partial=not standby)
        except ObjectMissing:
            try:
                fetch(repo, server, name, dest)  # archived while we looked
            except ObjectMissing:
                _refuse_absent_repository(repo)
                raise
    return 0


def _refuse_absent_repository(repo: Repository) -> None:
    """An unmounted or misnamed repository looks like one with nothing archived: when a file
    is not found, make sure the repository itself is there (its marker object)."""
    if not repo.exists(layout.MARKER_KEY):
        raise RepositoryError(
            f"the repository {repo.location} has no {layout.MARKER_KEY}: it is not mounted, or "
            "[repository] path names the wrong directory",
            "mount it or correct the path; recovery stops here instead of ending short")
