"""moto's S3-compatible server for the benchmarks: a process of its own on 127.0.0.1, over
plain HTTP or over TLS through bench/moto_tls.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# What bench/moto_tls.py logs per request: "took 12.3 ms: PUT /bucket/key?query"
REQUEST_TIME = re.compile(r"took ([0-9.]+) ms: (GET|PUT|HEAD|POST|DELETE) /([^/?\s]+)(\S*)")


@dataclass
class TlsFiles:
    """What a TLS server presents (certificate chain and key) and what a client trusts (CA)."""

    ca: Path
    chain: Path
    key: Path


@dataclass
class MotoServer:
    """moto's S3-compatible server, one process group of its own on 127.0.0.1: with `tls`,
    bench/moto_tls.py (moto's application plus the TLS close_notify pgBackRest needs, and a
    log line per request for `count_requests`), else `python -m moto.server` over plain HTTP.
    moto accepts any credentials and keeps every object in memory."""

    port: int
    log: Path
    tls: TlsFiles | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it answers; RuntimeError when it does not."""
        if self.tls is not None:
            argv = [sys.executable, str(Path(__file__).with_name("moto_tls.py")),
                    str(self.port), str(self.tls.chain), str(self.tls.key)]
        else:
            argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({self.proc.returncode}); see {self.log}")
            try:
                self.request("GET", "/")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"moto server did not answer on {self.endpoint} in {timeout:.0f} s")

    def request(self, method: str, path: str) -> int:
        """One unsigned request (moto does not check signatures); the HTTP status."""
        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        request = urllib.request.Request(self.endpoint + path, method=method)
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def create_bucket(self, name: str) -> None:
        status = self.request("PUT", f"/{name}")
        if status != 200:
            raise RuntimeError(f"creating bucket {name} on {self.endpoint}: HTTP {status}")

    def count_requests(self) -> dict[str, dict[str, list[float]]]:
        """Requests logged since the last call (TLS only: bench/moto_tls.py logs them): per
        bucket, per kind (LIST for a listing, else the method), [count, milliseconds in the
        server]."""
        counts: dict[str, dict[str, list[float]]] = {}
        with self.log.open("rb") as handle:
            handle.seek(self.log_offset)
            data = handle.read()
        self.log_offset += len(data)
        for found in REQUEST_TIME.finditer(data.decode(errors="replace")):
            took, method, bucket, rest = found.groups()
            kind = "LIST" if method == "GET" and "list-type=" in rest else method
            entry = counts.setdefault(bucket, {}).setdefault(kind, [0, 0.0])
            entry[0] += 1
            entry[1] += float(took)
        return counts

    def peak_rss_kb(self) -> int:
        """VmHWM of the moto process (it holds every object in memory)."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 10 s; waits for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
