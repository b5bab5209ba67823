"""moto's standalone S3-compatible server, run as a process of its own on 127.0.0.1 for the
tests of [[repository.copy]] in object storage (plain HTTP; its buckets live in its memory, so
a stopped server comes back empty)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from markship.pg.scratch import free_port
from tests.support.checks import wait_for


class Moto:
    """moto's standalone server as a process of its own (its buckets live in its memory: a
    stopped server comes back empty)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, bucket: str) -> None:
        """Start the server (logging into the directory) and create `bucket`."""
        log = open(self.directory / "moto.log", "ab")  # noqa: SIM115 - the server's to close
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=log, start_new_session=True)
        log.close()

        def answers() -> bool:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False
            return True

        wait_for(answers, "moto's S3 server", timeout=60, interval=0.1)
        request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None


@contextmanager
def running_moto(directory: Path) -> Iterator[Moto]:
    """A Moto (not started yet: `start(bucket)`), stopped on the way out."""
    server = Moto(directory)
    try:
        yield server
    finally:
        server.stop()
