"""Connection strings (libpq conninfo: `key=value` pairs or a `postgresql://` URI), read with
psycopg's own parser, and where their secrets may and may not go.

A conninfo from the config may carry a password (`password=…`, `user:secret@` or
`?password=…` in a URI) and the passphrase of a client key (`sslpassword=…`). Neither may
appear on a command line (any local user reads those with ps), in output, logs or the journal.

- `ProgramConninfo` splits a conninfo for a PostgreSQL program (pg_basebackup, pg_receivewal,
  pg_dump, pg_restore): its `argv` keeps only what is not secret; the password goes to
  PGPASSWORD in the program's environment (only the process owner and root can read
  /proc/PID/environ). libpq reads `sslpassword` from no environment variable and no passfile,
  so it goes into a private service file (mode 0600, in a 0700 directory of its own, owned by
  the user running the program) that PGSERVICEFILE names and `service=` selects; it is removed
  when the program has exited. A service file is the one place besides the command line where
  libpq takes every keyword; on disk it is as private as the config file it came from.
- `without_secrets()` is a whole conninfo fit to show; `redact_text()` hides every form of
  secret in free text (a config file, a message) and keeps the rest readable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tomllib
from types import TracebackType

import psycopg

from markship.errors import ConfigError

SECRET_KEYS = ("password", "sslpassword")
REDACTED = "<redacted>"
SERVICE = "markship"  # the section of the private service file


def parse(conninfo: str, **overrides: str) -> dict[str, str]:
    """The conninfo's keywords and values (a URI decoded), with `overrides` applied.

    Raises ConfigError when libpq's grammar refuses it; the message never quotes the
    conninfo (libpq's own message may quote a fragment of it, a password included).
    """
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo, **overrides)
    except psycopg.Error:
        raise ConfigError("a conninfo is not valid libpq syntax",
                          "write it as key=value pairs (quote values with spaces in '…') "
                          "or as a postgresql:// URI") from None
    return {key: str(value) for key, value in params.items() if value is not None}


def with_params(conninfo: str, **params: str) -> str:
    """The conninfo with `params` set (over what it said), in key=value form (a URI too)."""
    return psycopg.conninfo.make_conninfo(**{**parse(conninfo), **params})


def has_secret(conninfo: str) -> bool:
    """True when the conninfo carries a password or a key passphrase (in any form)."""
    try:
        params = parse(conninfo)
    except ConfigError:
        return redact_text(conninfo) != conninfo
    return any(key in params for key in SECRET_KEYS)


def without_secrets(conninfo: str) -> str:
    """The conninfo in key=value form without its password and key passphrase: what output
    may show. A conninfo libpq cannot read is shown redacted as text."""
    try:
        params = parse(conninfo)
    except ConfigError:
        return redact_text(conninfo)
    return psycopg.conninfo.make_conninfo(
        **{key: value for key, value in params.items() if key not in SECRET_KEYS})


# Where libpq looks for a server's socket when neither the conninfo nor PGHOST names a host:
# the directory compiled into the libpq psycopg's binary package ships (Debian's too).
DEFAULT_SOCKET_DIR = "/var/run/postgresql"
DEFAULT_PORT = "5432"


def address(conninfo: str) -> str:
    """Where libpq connects for this conninfo, fit to show: `host:port` for TCP (`[::1]:5432`
    for IPv6), the socket file for a directory (`/var/run/postgresql/.s.PGSQL.5432`), several
    comma-separated for a multi-host conninfo. Without host or port in the conninfo, PGHOST /
    PGPORT and then libpq's defaults, as libpq does; `hostaddr` before `host` (libpq connects
    to it). Never a secret: "unreadable conninfo" when libpq's grammar refuses it."""
    try:
        params = parse(conninfo)
    except ConfigError:
        return "unreadable conninfo"
    hosts = (params.get("hostaddr") or params.get("host") or os.environ.get("PGHOST")
             or DEFAULT_SOCKET_DIR).split(",")
    ports = (params.get("port") or os.environ.get("PGPORT") or DEFAULT_PORT).split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    places = []
    for host, port in zip(hosts, ports, strict=False):
        host = host.strip() or DEFAULT_SOCKET_DIR
        port = port.strip() or DEFAULT_PORT
        places.append(place(host, port))
    return ", ".join(places)


def place(host: str, port: str | int) -> str:
    """One host (a name, an address or a socket directory) and port as `address` shows them."""
    if host.startswith(("/", "@")):
        return f"{host.rstrip('/')}/.s.PGSQL.{port}"
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class ProgramConninfo:
    """One conninfo split for one run of a PostgreSQL program.

    `argv` (for -d / --dbname) holds no secret; `env` is the whole environment for the
    program, carrying the secrets. Close it (or use it as a context manager) once the program
    has exited: that removes the private service file, if one was needed. Raises ConfigError
    for a conninfo libpq cannot read, or an `sslpassword` a service file cannot carry.
    """

    def __init__(self, conninfo: str, **overrides: str) -> None:
        params = parse(conninfo, **overrides)
        self.env = dict(os.environ)
        self._directory: str | None = None
        password = params.pop("password", None)
        if password is not None:
            self.env["PGPASSWORD"] = password
        passphrase = params.pop("sslpassword", None)
        if passphrase is not None:
            if "service" in params:
                raise ConfigError("a conninfo with both service= and sslpassword= cannot be "
                                  "handed to PostgreSQL's programs without showing the "
                                  "passphrase on their command line",
                                  "put sslpassword into that service's section instead")
            params["service"] = SERVICE
            self.env["PGSERVICEFILE"] = self._service_file(passphrase)
        self.argv = psycopg.conninfo.make_conninfo(**params)

    def _service_file(self, passphrase: str) -> str:
        # libpq takes a service file value as the rest of its line, trailing blanks cut.
        if passphrase != passphrase.strip() or "\n" in passphrase or "\r" in passphrase:
            raise ConfigError("an sslpassword with line breaks or leading or trailing blanks "
                              "cannot be handed to PostgreSQL's programs safely",
                              "choose a key passphrase without them")
        self._directory = tempfile.mkdtemp(prefix="markship-conninfo-")  # mode 0700
        path = os.path.join(self._directory, "pg_service.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"[{SERVICE}]\nsslpassword={passphrase}\n")
        return path

    def close(self) -> None:
        """Remove the private service file (a no-op without one; safe to call twice)."""
        directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> ProgramConninfo:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# -- free text ------------------------------------------------------------------------------------

# A URI's password: libpq takes everything between the first ':' after the scheme and the
# first '@', when that '@' comes before any '/'. Percent-encoded or not, it is hidden.
_URI_PASSWORD = re.compile(r"(?i)(postgres(?:ql)?://[^:@/\s]*:)([^@/\s]*)(?=@)")
# A URI's query parameters end at '&' (or the end of the URI).
_URI_QUERY_SECRET = re.compile(r"(?i)([?&](?:ssl)?password=)([^&\s]*)")
# key=value (libpq, TOML, env files): any key naming a password, passphrase, secret or token.
# A value is '…' (libpq's quotes, a backslash escapes the next character), "…" (TOML's), or
# runs to a blank (a backslash escapes there too).
_KEYWORD_SECRET = re.compile(
    r"""(?i)(?<![\w.?&-])([\w-]*(?:password|passphrase|secret|token)[\w-]*)(\s*=\s*)"""
    r"""('(?:\\.|[^'\\\n])*'?|"(?:\\.|[^"\\\n])*"?|(?:\\.|[^\s\\])+)""")
# TOML strings (multi-line first); a comment, so that quotes in it open no string.
_TOML_STRING = re.compile(r'"""[\s\S]*?"""(?!")|\'\'\'[\s\S]*?\'\'\'(?!\')'
                          r'|"(?:\\.|[^"\\\n])*"|\'[^\'\n]*\'|#[^\n]*')


def _hide(value: str) -> str:
    """REDACTED in place of a value: inside its own quotes when it was quoted, else keeping
    the quotes that close the string it sits in (`"host=h password=x"` read as plain text)."""
    quote = value[:1]
    if quote in ("'", '"') and len(value) >= 2 and value.endswith(quote):
        return quote + REDACTED + quote
    closing = len(value) - len(value.rstrip("'\""))
    return REDACTED + value[len(value) - closing:]


def _redact_plain(text: str) -> str:
    text = _URI_PASSWORD.sub(lambda m: m.group(1) + REDACTED, text)
    text = _URI_QUERY_SECRET.sub(lambda m: m.group(1) + _hide(m.group(2)) if m.group(2)
                                 else m.group(0), text)
    return _KEYWORD_SECRET.sub(lambda m: m.group(1) + m.group(2) + _hide(m.group(3)), text)


def _redact_toml_string(match: re.Match[str]) -> str:
    """A TOML string whose value holds a secret, written again with the secret hidden: the
    value is what libpq reads, so its quotes and escapes are read as libpq reads them (TOML's
    own escapes would mislead a pattern run over the file's text)."""
    token = match.group(0)
    if token.startswith("#"):
        return token
    try:
        value = tomllib.loads(f"v = {token}")["v"]
    except tomllib.TOMLDecodeError:
        return token
    hidden = _redact_plain(value)
    if hidden == value:
        return token
    if "'" not in hidden and "\n" not in hidden and token.startswith("'"):
        return f"'{hidden}'"
    return json.dumps(hidden, ensure_ascii=False)  # JSON's escapes are TOML's


def redact_text(text: str) -> str:
    """`text` with every libpq secret replaced by REDACTED: `password=`/`sslpassword=` (quoted
    or not, also as URI query parameters), the password of a `postgresql://user:secret@`
    URI, and other `…secret…=`, `…token…=`, `…passphrase…=` values; in a TOML file, inside its
    strings too. The rest stays readable."""
    return _redact_plain(_TOML_STRING.sub(_redact_toml_string, text))


def secrets_of(*conninfos: str) -> list[str]:
    """The password and key passphrase values of these conninfos (unreadable ones skipped)."""
    found = []
    for text in conninfos:
        try:
            params = parse(text)
        except ConfigError:
            continue
        found += [params[key] for key in SECRET_KEYS if params.get(key)]
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """`text` (a server's error message, say) with every known secret value replaced, plus
    redact_text(): PostgreSQL quotes fragments of a failed statement, which a pattern
    cannot recognise as a password."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return redact_text(text)
