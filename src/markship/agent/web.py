"""The agent's read-only HTTP server (`[web]`): the status page, `/metrics`, `/api/status`.

Off unless `[web] listen` is set. Every answer comes from the last snapshot of the group
(markship.monitor.snapshot), which a thread of its own takes every `[web] refresh` seconds:
a request asks no server and lists nothing, so scrapers cannot load the group or slow marks.
The refresher and the request threads run at a raised nice value and share no lock with the
marking thread; a snapshot that would still run when the next mark is due starts after it.

Only GET and HEAD are answered (405 otherwise); every path needs the configured credentials:
a bearer token, or a user and password checked against PBKDF2-SHA256 hashes (the
`pbkdf2_sha256$ITERATIONS$SALT$HASH` lines Django also writes), unless `auth = "none"` is
written. TLS when `tls_cert` and `tls_key` are set.

`prepare` reads the credential files, loads the certificate and binds the port before
markship becomes the repository's OS user (the files may be root's alone, the port may be
privileged); `WebServer` serves once the agent holds the agent lock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import socket
import ssl
import stat
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markship.agent.log import EventLog
from markship.config.model import Config, WebSection, listen_address
from markship.errors import ConfigError
from markship.marks import priority
from markship.monitor import metrics
from markship.monitor.snapshot import Snapshot, status_json
from markship.pg.conninfo import redact_text
from markship.repository.base import Repository
from markship.timefmt import exact_times

WEB_NICE = 10  # the refresher and request threads yield the CPU to marks
# While the web server runs, a thread waiting for the interpreter lock (the marking thread,
# back from a server's answer) gets it after at most this many seconds, not after Python's
# default 5 ms: a mark's few round trips would each wait that long behind a snapshot or a
# request being answered.
GIL_SLICE = 0.0005
GAP_MARGIN = 0.2  # seconds: a snapshot due closer than its own duration + this to the next
# mark waits for that mark to finish first (the two would compete for the CPU and the GIL)
REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request (and TLS handshake)
MIN_ITERATIONS = 100_000  # PBKDF2 rounds a basic_auth_file line must have at least
VERIFIED_KEEP = 64  # successful basic-auth headers remembered (PBKDF2 is slow on purpose)
HASH_PREFIX = "pbkdf2_sha256"


@dataclass(frozen=True)
class _User:
    iterations: int
    salt: str
    hash: bytes


@dataclass
class Gate:
    """Who may read: `allows(Authorization header)`."""

    kind: str  # "token", "basic" or "none"
    token: bytes = b""
    users: dict[str, _User] = field(default_factory=dict)
    _verified: dict[bytes, None] = field(default_factory=dict)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allows(self, header: str | None) -> bool:
        if self.kind == "none":
            return True
        if header is None:
            return False
        scheme, _, value = header.strip().partition(" ")
        if self.kind == "token":
            return scheme.lower() == "bearer" and hmac.compare_digest(
                value.strip().encode(), self.token)
        if scheme.lower() != "basic":
            return False
        # A header already checked is known by a keyed hash of it, not by the password.
        seen = hmac.digest(self._key, header.encode(), "sha256")
        with self._lock:
            if seen in self._verified:
                return True
        if not self._check_basic(value.strip()):
            return False
        with self._lock:
            if len(self._verified) >= VERIFIED_KEEP:
                self._verified.pop(next(iter(self._verified)))
            self._verified[seen] = None
        return True

    def _check_basic(self, value: str) -> bool:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        known = self.users.get(user)
        # An unknown user costs the same time as a wrong password.
        entry = known or _User(MIN_ITERATIONS, "unknown-user", b"")
        computed = hashlib.pbkdf2_hmac("sha256", password.encode(), entry.salt.encode(),
                                       entry.iterations)
        return known is not None and hmac.compare_digest(computed, entry.hash)


def _private_file(path: Path, key: str) -> bytes:
    """The contents of a file only its owner may read (ConfigError otherwise)."""
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"[web] {key} {path} can be read by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o})",
                f"chmod 600 {path}, owned by the user that starts markship run")
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[web] {key} {path} cannot be read ({exc.strerror})",
                          "create it (see markship's README, [web]) or fix the path") from None


def parse_users(text: str, path: Path) -> dict[str, _User]:
    """`user:pbkdf2_sha256$ITERATIONS$SALT$BASE64HASH` lines (blank and # lines skipped)."""
    users: dict[str, _User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, encoded = line.partition(":")
        parts = encoded.split("$")
        try:
            if not user or len(parts) != 4 or parts[0] != HASH_PREFIX:
                raise ValueError
            iterations = int(parts[1])
            digest = base64.b64decode(parts[3], validate=True)
        except (ValueError, binascii.Error):
            raise ConfigError(f"[web] basic_auth_file {path} line {number} is not "
                              f"user:{HASH_PREFIX}$ITERATIONS$SALT$HASH",
                              "make the line as markship's README shows ([web])") from None
        if iterations < MIN_ITERATIONS:
            raise ConfigError(f"[web] basic_auth_file {path} line {number} has {iterations} "
                              f"iterations, fewer than {MIN_ITERATIONS}",
                              "make the line again as markship's README shows ([web])")
        users[user] = _User(iterations, parts[2], digest)
    if not users:
        raise ConfigError(f"[web] basic_auth_file {path} holds no user",
                          "add a line as markship's README shows ([web])")
    return users


def load_gate(web: WebSection) -> Gate:
    """The credentials of `web` (ConfigError: a file missing, readable by others, empty)."""
    if web.auth == "token":
        assert web.token_file is not None  # WebSection checks it
        token = _private_file(web.token_file, "token_file").strip()
        if len(token) < 16:
            raise ConfigError(f"[web] token_file {web.token_file} holds fewer than 16 "
                              "characters", "put a long random token in it, e.g. "
                              "openssl rand -hex 32")
        return Gate("token", token=token)
    if web.auth == "basic":
        assert web.basic_auth_file is not None
        text = _private_file(web.basic_auth_file, "basic_auth_file")
        return Gate("basic", users=parse_users(text.decode(errors="replace"),
                                               web.basic_auth_file))
    return Gate("none")


def tls_context(web: WebSection) -> ssl.SSLContext | None:
    if web.tls_cert is None or web.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(web.tls_cert, web.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[web] tls_cert {web.tls_cert} and tls_key {web.tls_key} cannot "
                          f"be loaded ({getattr(exc, 'strerror', None) or exc})",
                          "give a PEM certificate (chain) and its private key") from None
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site: WebServer | None = None
    waiting = b"starting\n"  # the 503's body until the site serves

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away or spoke no TLS: nothing the operator must act on.
        pass


@dataclass
class Prepared:
    """The bound server and its credentials; it answers only once serving, 503 until the
    site (WebServer) is there."""

    server: _Server
    gate: Gate
    tls: bool
    serving: threading.Thread | None = None

    def serve(self, waiting: str | None = None) -> None:
        """Start answering (503, `waiting` as the body, until a site serves): a standby
        agent answers at once instead of leaving connections unanswered until it takes
        over."""
        if waiting is not None:
            self.server.waiting = waiting.encode() + b"\n"
        if self.serving is None:
            self.serving = threading.Thread(target=self.server.serve_forever, daemon=True,
                                            kwargs={"poll_interval": 0.5}, name="markship-web")
            self.serving.start()

    def close(self) -> None:
        """Stop answering and free the port (again: nothing)."""
        serving, self.serving = self.serving, None
        if serving is not None:
            self.server.shutdown()
        self.server.server_close()


def prepare(config: Config) -> Prepared | None:
    """Read the credentials, load the certificate, bind `[web] listen`; None when [web] is
    off. Raises ConfigError with one line for anything the operator must fix."""
    web = config.web
    if web.listen is None:
        return None
    gate = load_gate(web)
    context = tls_context(web)
    host, port = listen_address(web.listen)

    class Bound(_Server):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        server = Bound((host, port), _Handler)
    except OSError as exc:
        raise ConfigError(f"[web] listen = {web.listen!r} cannot be used ({exc.strerror})",
                          "pick a free port and an address of this host") from None
    if context is not None:
        # The handshake happens on the request's thread (at its first read), not in accept.
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
    return Prepared(server, gate, context is not None)


@dataclass(frozen=True)
class _Published:
    """One snapshot as served: the metrics' view, and the page and /api/status ready."""

    view: metrics.View
    page: bytes | None  # None: the page could not be rendered (logged)
    api: bytes


def api_status(snapshot: Snapshot) -> dict[str, Any]:
    """`/api/status`: `markship status --json` plus marks, standbys, checklist, taken_at
    (times as datetimes: see `_api_bytes`)."""
    return status_json(snapshot.status) | {
        "taken_at": snapshot.taken_at,
        "snapshot_seconds": round(snapshot.seconds, 3),
        "snapshot_problems": snapshot.problems,
        "marks": [s.record.model_dump() | {
            "complete": s.complete, "waiting_for": s.waiting_for,
            "unrestorable": s.unrestorable, "age_seconds": round(s.age_seconds, 3)}
            for s in snapshot.marks],
        "standbys": [asdict(s) | {"address": redact_text(s.address)}
                     for s in snapshot.standbys],
        "checklist": [asdict(s) for s in snapshot.checklist]}


def _api_bytes(snapshot: Snapshot) -> bytes:
    """`/api/status` as served: times to the microsecond with zone, as `--json` prints them."""
    return json.dumps(exact_times(api_status(snapshot)), default=_json_default, indent=2,
                      sort_keys=True).encode()


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class WebServer:
    """Serves `prepared` from snapshots refreshed every `[web] refresh` seconds."""

    def __init__(self, config: Config, repo: Repository, prepared: Prepared,
                 feed: metrics.MarkFeed, log: EventLog) -> None:
        from markship.repository.copies import open_copies

        self.config, self.repo, self.prepared, self.log = config, repo, prepared, log
        self.gate = prepared.gate
        self.feed = feed
        self.copies = open_copies(config)
        self.history = metrics.History()
        self.published: _Published | None = None
        self.registry = metrics.registry(config, self.view, feed)
        self.stopping = threading.Event()
        self.said: dict[str, str] = {}  # the refresher's failures as last logged
        self.switch_interval = sys.getswitchinterval()  # Python's, restored at close
        self.refresher = threading.Thread(target=self._refresh_loop, daemon=True,
                                          name="markship-web-refresh")
        prepared.server.site = self

    def view(self) -> metrics.View:
        published = self.published
        if published is None:
            return metrics.View(None, metrics.History())
        return published.view

    def start(self) -> None:
        sys.setswitchinterval(GIL_SLICE)
        self.refresher.start()
        self.prepared.serve()
        host, port = self.prepared.server.server_address[:2]
        self.log("web.listen", address=str(host) + ":" + str(port), auth=self.gate.kind,
                 tls="on" if self.prepared.tls else "off",
                 refresh_s=self.config.web.refresh)

    def close(self) -> None:
        self.stopping.set()
        self.prepared.close()
        self.refresher.join(timeout=5)
        sys.setswitchinterval(self.switch_interval)

    def _refresh_loop(self) -> None:
        from markship.monitor import page, snapshot

        priority.set_for_thread(WEB_NICE)  # raising nice is always allowed
        known: dict[str, Any] = {}
        while not self.stopping.is_set():
            self._wait_for_gap()
            try:
                taken = snapshot.take(self.config, self.repo, self.copies, known_marks=known)
                self.history.update(self.repo, self.copies, taken)
                api = _api_bytes(taken)
                try:
                    rendered: bytes | None = page.render(taken, self.config).encode()
                    self.said.pop("web.page_failed", None)
                except Exception as exc:  # the page's defect must not take /metrics along
                    rendered = None
                    self._once("web.page_failed", "error", f"{type(exc).__name__}: {exc}")
                self.published = _Published(metrics.View(taken, self.history.copy()),
                                            rendered, api)
            except Exception as exc:  # whatever happens, the agent and its marks go on
                self._once("web.snapshot_failed", "warning", f"{type(exc).__name__}: {exc}",
                           detail=f"the last state is served; tried again every "
                                  f"{self.config.web.refresh:g} s")
            else:
                self.said.pop("web.snapshot_failed", None)
            self.stopping.wait(self.config.web.refresh)

    def _once(self, event: str, level: str, reason: str, **fields: str) -> None:
        """Log a failure of the refresher, not again each refresh while it stays the same."""
        if self.said.get(event) != reason:
            self.said[event] = reason
            self.log(event, level=level, reason=reason, **fields)

    def _wait_for_gap(self) -> None:
        """When the next planned mark is due before a snapshot would be done, wait until that
        mark finished (at most one mark interval): marks then rarely share the CPU with it."""
        published = self.published
        expected = published.view.snapshot.seconds if (
            published is not None and published.view.snapshot is not None) else 1.0
        planned = self.feed.next_at
        if planned is None or planned - time.monotonic() > expected + GAP_MARGIN:
            return
        self.feed.finished.clear()
        if self.feed.next_at != planned:  # it finished meanwhile: the gap begins now
            return
        self.feed.finished.wait(min(self.config.marks.interval, self.config.web.refresh) + 1)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for GET `path`."""
        from prometheus_client import CONTENT_TYPE_LATEST

        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, metrics.exposition(self.registry)
        if path not in ("/", "/api/status"):
            return 404, "text/plain; charset=utf-8", b"not found: /, /metrics, /api/status\n"
        published = self.published
        if published is None:
            return 503, "text/plain; charset=utf-8", b"no snapshot of the group yet\n"
        if path == "/api/status":
            return 200, "application/json", published.api
        if published.page is None:
            return 500, "text/plain; charset=utf-8", b"the page failed: see the agent's log\n"
        return 200, "text/html; charset=utf-8", published.page


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "markship"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        priority.set_for_thread(WEB_NICE)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per request (a scraper every few seconds); never the headers

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True  # its body, if any, is not read
        self._send(405, "text/plain; charset=utf-8", b"read-only: GET and HEAD only\n",
                   head=False, extra={"Allow": "GET, HEAD", "Connection": "close"})

    def _serve(self, head: bool) -> None:
        site = self.server.site
        if site is None:
            self._send(503, "text/plain; charset=utf-8", self.server.waiting, head,
                       extra={"Retry-After": "5"})
            return
        if not site.gate.allows(self.headers.get("Authorization")):
            challenge = ('Basic realm="markship", charset="UTF-8"'
                         if site.gate.kind == "basic" else 'Bearer realm="markship"')
            self._send(401, "text/plain; charset=utf-8", b"credentials needed\n", head,
                       extra={"WWW-Authenticate": challenge})
            return
        try:
            code, kind, body = site.answer(urlsplit(self.path).path)
        except Exception as exc:  # a defect answers 500; the agent goes on
            site.log("web.request_failed", level="error", path=urlsplit(self.path).path,
                     reason=f"{type(exc).__name__}: {exc}")
            code, kind, body = 500, "text/plain; charset=utf-8", b"internal error\n"
        self._send(code, kind, body, head)

    def _send(self, code: int, kind: str, body: bytes, head: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def started(config: Config, repo: Repository, prepared: Prepared | None,
            feed: metrics.MarkFeed, log: EventLog) -> WebServer | None:
    """The web server serving (None when [web] is off). The agent closes it when it stops."""
    if prepared is None:
        return None
    site = WebServer(config, repo, prepared, feed, log)
    site.start()
    return site
