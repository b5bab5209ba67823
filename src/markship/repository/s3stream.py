"""Streaming to and from S3 for S3Repository: the producer's side of a multipart upload, and a
GET's body read as a file."""

from __future__ import annotations

import io
import threading

from markship.errors import ConfigError, RepositoryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


PART = 8 * 1024 * 1024  # multipart part size (S3's minimum is 5 MiB)
UPLOADS = 4  # parts in flight per upload: PART × UPLOADS bounds the memory of a stream
PIECE = 1024 * 1024  # what the producer hands the uploader at a time
READ_CHUNK = 1024 * 1024


class Upload:
    """The producer's side of a streaming multipart upload: pieces go through a small queue
    to a thread running obstore.put over them; an exception put in the queue aborts it."""

    def __init__(self, repo: Any, key: str) -> None:
        import queue

        self.repo, self.key = repo, key
        self.pending = bytearray()
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"upload {key}", daemon=True)
        self.thread.start()

    def _pieces(self) -> Iterator[bytes]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item  # obstore aborts the multipart upload
            yield item

    def _run(self) -> None:
        import obstore

        try:
            obstore.put(self.repo.store, self.key, self._pieces(), chunk_size=PART,
                        max_concurrency=UPLOADS)
        except BaseException as exc:
            self.failure = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self.queue.get_nowait()
                except Exception:
                    break

    def _send(self, item: bytes | BaseException | None) -> None:
        import queue

        while self.failure is None and self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        self._raise()

    def _raise(self) -> None:
        failure = self.failure
        if failure is None:
            raise RepositoryError(f"upload of {self.key} stopped", "retry")
        if isinstance(failure, (ConfigError, RepositoryError)):
            raise failure
        raise self.repo._error(failure, self.key, "writing") from None

    def write(self, data: bytes | memoryview, /) -> int:
        self.pending += data
        if len(self.pending) >= PIECE:
            self._send(bytes(self.pending))
            self.pending.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self.pending:
            self._send(bytes(self.pending))
            self.pending.clear()
        self._send(None)
        self.thread.join()
        if self.failure is not None:
            self._raise()

    def abort(self, cause: BaseException) -> None:
        if self.thread.is_alive():
            try:  # noqa: SIM105
                self.queue.put(RuntimeError(f"upload abandoned: {type(cause).__name__}"),
                               timeout=5)
            except Exception:
                pass
            self.thread.join(timeout=30)


class ObjectReader(io.RawIOBase):
    """The body of a GET, read as a stream of chunks."""

    def __init__(self, repo: Any, key: str, result: Any) -> None:
        self.repo, self.key = repo, key
        self.chunks = iter(result.stream(min_chunk_size=READ_CHUNK))
        self.current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.current:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                return 0
            except Exception as exc:
                raise self.repo._error(exc, self.key, "reading") from None
            self.current = memoryview(bytes(chunk))
        size = min(len(buffer), len(self.current))
        buffer[:size] = self.current[:size]
        self.current = self.current[size:]
        return size
