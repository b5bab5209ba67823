"""WAL archiving: `wal-push` (archive_command) and `wal-fetch` (restore_command).

PostgreSQL runs these once per 16 MB segment, so this module imports only the standard library,
zstandard and the repository; it reads the raw TOML instead of the full pydantic model.

Contract with PostgreSQL:
- wal-push exits 0 only once the file is durably stored; pushing the same content again also
  exits 0; different content under an archived name exits 1 and keeps the stored object.
- wal-fetch exits 0 with the file at DEST, 1 quietly when it is not archived (PostgreSQL then
  looks elsewhere or ends recovery), and 126 when the stored copy is corrupt: an exit status
  above 125 makes PostgreSQL abort recovery instead of treating corrupt WAL as the end of WAL.
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
)
from markship.lsn import Segment, parse_segment_name, wal_file_kind
from markship.repository import layout, open_repository

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from collections import deque
    from collections.abc import Iterator
    from typing import Any, BinaryIO

    from markship.repository import FsRepository, Repository
    from markship.repository.base import Writable

# 256 KiB: a fresh process reading 1 MiB chunks spent twice as long faulting in new heap
# pages as reading; smaller chunks reuse the same memory.
CHUNK = 256 * 1024
EXIT_CORRUPT = 126


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
    def from_raw(cls, raw: dict[str, Any]) -> WalSettings:
        repo = raw.get("repository")
        if not isinstance(repo, dict) or not isinstance(repo.get("path"), str):
            raise ConfigError("[repository] path is missing",
                              'add path = "/dir" under [repository]')
        servers = raw.get("server")
        names = frozenset(s["name"] for s in servers or []
                          if isinstance(s, dict) and isinstance(s.get("name"), str))
        level = repo.get("compression_level", 1)
        ahead = repo.get("push_ahead", 8)
        encryption = raw.get("encryption")
        recipient = identity = catalog_key = ""
        if isinstance(encryption, dict):
            recipient = str(encryption.get("recipient", ""))
            identity = str(encryption.get("identity_file", ""))
            catalog_key = str(encryption.get("catalog_key_file", ""))
            if not recipient.startswith("age1"):
                raise ConfigError("[encryption] recipient is missing or not an age public key",
                                  "use the age1… line printed by `markship key create`")
        return cls(repo["path"], str(repo.get("os_user", "postgres")),
                   int(level) if isinstance(level, int) else 1, names,
                   int(ahead) if isinstance(ahead, int) else 8, recipient, identity,
                   catalog_key)

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
    from markship import configfile

    settings = WalSettings.from_raw(configfile.read(config_path))
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


def _mark_points(repo: Repository, key: str) -> dict[str, tuple[str, str]] | None:
    """server → (WAL file, delivery) of a mark record, read without pydantic; None if
    unreadable."""
    import hashlib
    import json

    try:
        envelope = json.loads(repo.read_bytes(key))
        body = envelope["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(canonical).hexdigest() != envelope["sha256"]:
            return None
        delivery = body.get("delivery") or {}
        return {server: (point["wal_file"], delivery.get(server, "switch"))
                for server, point in body["points"].items()}
    except (ValueError, KeyError, TypeError, ObjectMissing):
        return None


def standby_ceiling(repo: Repository, server: str, floor: str | None) -> Segment | None:
    """The newest segment a DR-site standby may replay.

    That is the segment *before* the one holding the newest complete group mark: the mark's
    own segment also holds WAL written after the mark, and a standby that replayed it could no
    longer stop at the mark. `floor` (the base backup's last segment) always stays allowed so a
    new standby can reach consistency. None: nothing is allowed beyond the floor.
    """
    ceiling: Segment | None = None
    names = sorted((n for n in repo.children("marks/") if n.endswith(".json")), reverse=True)
    for name in names[:100]:
        points = _mark_points(repo, "marks/" + name)
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
    try:
        # Streamed files are pg_receivewal's own (never encrypted: streaming is off then).
        with repo.open_stored(key) as source, open(temp, "wb") as out:
            while chunk := source.read(CHUNK):
                out.write(chunk)
    except ObjectMissing:
        _discard(temp)  # archived and pruned meanwhile: the caller looks again
        raise
    except BaseException:
        _discard(temp)
        raise
    os.replace(temp, dest)


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
    try:
        with reader, open(temp, "wb") as out:
            while chunk := reader.read(CHUNK):
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
    """Entry point of `markship wal-push` / `markship wal-fetch` (lean path)."""
    import sys

    from markship import configfile, osuser
    from markship.errors import MarkshipError

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
        print(f"{usage}\nmarkship {command}: error: wrong arguments {argv!r}", file=sys.stderr)
        return 2
    try:
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
                push_ahead_in_background(repo, server, path, settings,
                                         spool_for=config_path)
            push(repo, server, path, settings.compression_level)
        else:
            name = positional[0]
            if standby and wal_file_kind(name) in ("segment", "partial"):
                ceiling = standby_ceiling(repo, server, floor)
                if ceiling is None or parse_segment_name(name[:24]) > ceiling:
                    return 1  # withheld until the next group mark completes
            try:
                fetch(repo, server, name, positional[1])
            except ObjectMissing:
                # Not archived yet: the agent's WAL receiver may hold it. A standby gets
                # whole segments only (a partial one would end its replay early).
                try:
                    fetch_streamed(repo, server, name, positional[1], allow_partial=not standby)
                except ObjectMissing:
                    fetch(repo, server, name, positional[1])  # archived while we looked
    except ObjectMissing as exc:
        if command == "wal-fetch":
            return 1  # not archived (yet): PostgreSQL expects a quiet failure
        print(f"markship {command}: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except CorruptObject as exc:
        print(f"markship {command}: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_CORRUPT if command == "wal-fetch" else 1
    except MarkshipError as exc:
        print(f"markship {command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:
        print(f"markship {command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
