"""What a restore leaves in its data directory for the commands that come back to it later.

`markship restore` writes `markship-restore.json` next to the restored files: the server it
restored, the backup set, the port and host it listens on, the target and the action there.
`restore --resume` and `restore --advance-to` read it to find and drive the server from the
directory alone; the conninfo is the configured one of that server with the restored host
and port (secrets stay in the config, never in this file).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from markship.config.model import Config
from markship.errors import RestoreError
from markship.pg.conninfo import parse, with_params

STATE_NAME = "markship-restore.json"


@dataclass(frozen=True)
class RestoreState:
    """A restore's server, set, address, and where it was told to stop (`target`, the text of
    Target.describe) and what to do there (`action`)."""

    server: str
    set_id: str
    pg_version_num: int
    port: int | None
    host: str | None  # a socket directory or an address; None: the configured host
    target: str
    action: str
    timeline: int | None = None  # recovery_target_timeline when a mark set it


def restored_host(settings: dict[str, str]) -> str | None:
    """Where a client reaches a server with these settings: its first socket directory, else
    its first listen address (None when neither was set)."""
    for key in ("unix_socket_directories", "listen_addresses"):
        first = settings.get(key, "").split(",")[0].strip()
        if first and first != "*":
            return first
    return None


def write_state(data_dir: Path, state: RestoreState) -> None:
    path = data_dir / STATE_NAME
    with path.open("w") as handle:
        json.dump(asdict(state), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_state(data_dir: Path) -> RestoreState:
    """The state of the restore in `data_dir`. Raises RestoreError when it has none."""
    try:
        data = json.loads((data_dir / STATE_NAME).read_text())
        return RestoreState(**data)
    except FileNotFoundError:
        raise RestoreError(f"{data_dir} holds no markship restore ({STATE_NAME} is missing)",
                           "give the --target-dir a markship restore wrote") from None
    except (OSError, ValueError, TypeError) as exc:
        raise RestoreError(f"cannot read {data_dir / STATE_NAME}: {exc}",
                           "restore again into an empty directory") from None


def conninfo(config: Config, state: RestoreState) -> str:
    """The configured conninfo of the restored server, pointed at where the restore listens."""
    params = parse(config.server(state.server).conninfo)
    params.pop("hostaddr", None)
    if state.host is not None:
        params["host"] = state.host
    if state.port is not None:
        params["port"] = str(state.port)
    return with_params("", **params)
