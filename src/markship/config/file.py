"""Find and read the TOML configuration file (stdlib only, for the lean WAL commands)."""

from __future__ import annotations

import os

from markship.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ENV_VAR = "MARKSHIP_CONFIG"
DEFAULT_NAME = "markship.toml"


def locate(explicit: str | os.PathLike[str] | None = None) -> str:
    """`--config PATH`, else `$MARKSHIP_CONFIG`, else `./markship.toml`.

    Raises ConfigError when the chosen file does not exist.
    """
    if explicit:
        path, source = os.fspath(explicit), "--config"
    elif os.environ.get(ENV_VAR):
        path, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    else:
        path, source = DEFAULT_NAME, "the default ./markship.toml"
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(
            f"configuration file {path} (from {source}) not found",
            "pass --config PATH, set $MARKSHIP_CONFIG, or create ./markship.toml",
        )
    return path


def read(path: str) -> dict[str, Any]:
    """Parse the TOML file; raise ConfigError naming the line of a syntax error."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except PermissionError:
        raise ConfigError(
            f"configuration file {path} is not readable by this user",
            "make it readable (the PostgreSQL OS user reads it in archive_command)",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML ({exc})",
                          "fix the syntax at the position shown") from None
