#!/usr/bin/env python3
"""moto's standalone S3-compatible server over TLS, closing each connection with a TLS
close_notify, without Nagle's algorithm, and logging how long each request took in the server.

`python -m moto.server -c CERT -k KEY` closes a connection by closing the socket, without a
close_notify. pgBackRest (OpenSSL 3) then fails every response with an empty body (a PUT's
200) with "TLS error [1:167772454] unexpected eof while reading" and retries it until it gives
up. This runs the same moto application with the same request handler, plus a clean TLS
shutdown once a connection is done and TCP_NODELAY (see CleanCloseHandler.setup); s3_bench.py
starts it as its S3 server:

    python bench/moto_tls.py PORT CERT_CHAIN KEY
"""

from __future__ import annotations

import signal
import socket
import ssl
import sys
import time
from types import FrameType

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class CleanCloseHandler(MotoRequestHandler):
    """moto's request handler; a finished TLS connection is shut down with close_notify, and
    each request's time in the server is logged ("took 12.3 ms: GET /bucket/key?query")."""

    def setup(self) -> None:
        super().setup()
        # werkzeug writes a response's head and body with separate sends: with Nagle's
        # algorithm the body waits for the client's delayed ACK of the head (~40 ms on every
        # response with a body), which no production S3 service makes its clients pay.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        started = time.perf_counter()
        super().handle_one_request()
        if getattr(self, "requestline", ""):
            took = (time.perf_counter() - started) * 1000
            method, _, rest = self.requestline.partition(" ")
            self.log_message("took %.1f ms: %s %s", took, method, rest.rpartition(" ")[0])

    def finish(self) -> None:
        super().finish()
        connection = self.connection
        if isinstance(connection, ssl.SSLSocket):
            try:
                connection.settimeout(1.0)
                connection.unwrap()  # sends close_notify (and reads the peer's, if it comes)
            except (OSError, ValueError):
                pass  # the client has gone already: nothing left to close cleanly


def _exit(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str]) -> None:
    port, chain, key = int(argv[0]), argv[1], argv[2]
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=True, ssl_context=(chain, key),
               request_handler=CleanCloseHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
