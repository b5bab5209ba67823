#!/usr/bin/env python3
"""How far an `async` copy of the repository ([[repository.copy]]) stays behind under load.

One throwaway PostgreSQL 15 server archiving with `markship wal-push`, a base backup, the agent
(`markship run`, which copies new objects to the copy every 2 s), then `pgbench -c 4` for
--duration seconds. Every half second the copy's lag is measured in-process
(markship.repository.copies.lag): the age of the oldest object the copy lacks — the seconds
it is behind — and how many objects that is. Then the load stops and the time until the copy
has caught up is measured. The copy is a second directory, or with --s3 a bucket on moto's
S3-compatible server on loopback. Shared machines: read percentiles, not single samples.

Run as root with the markship virtualenv's interpreter:

    /opt/markship/venv/bin/python bench/copy_lag_bench.py               # --duration 60
    /opt/markship/venv/bin/python bench/copy_lag_bench.py --duration 15 --s3
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import OS_USER, pg, print_table, running_as_root, save_results, say
from markship.pg.scratch import ScratchServer, chown_to, free_port
from markship.repository.backends import open_repository
from markship.repository.copies import lag
from markship.repository.s3 import S3Location
from moto_server import MotoServer

BUCKET = "copy-lag-bench"
MARKSHIP = Path(sys.executable).parent / "markship"  # this interpreter's install
CATCH_UP_LIMIT = 300.0  # seconds: a copy not caught up by then is reported as a failure


def caught_up(primary: Any, copy: Any, what: str) -> float:
    """Seconds until `copy` holds everything `primary` does (RuntimeError past the limit)."""
    started = time.monotonic()
    while lag(primary, copy).objects:
        if time.monotonic() - started > CATCH_UP_LIMIT:
            raise RuntimeError(f"the copy did not catch up with {what} in {CATCH_UP_LIMIT:g} s")
        time.sleep(0.2)
    return time.monotonic() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of pgbench load")
    parser.add_argument("--scale", type=int, default=5, help="pgbench -i scale")
    parser.add_argument("--s3", action="store_true", help="the copy in a moto bucket")
    parser.add_argument("--keep", action="store_true", help="keep the bench directory")
    args = parser.parse_args()
    if not running_as_root():
        return 2
    root = Path(tempfile.mkdtemp(prefix="markship-bench-copylag-"))
    root.chmod(0o755)
    chown_to(root, OS_USER)
    config = root / "markship.toml"
    server = ScratchServer("src", root / "src", free_port(), os_user=OS_USER, settings={
        "archive_mode": "on", "fsync": "off", "shared_buffers": "64MB",
        "archive_command": f"{MARKSHIP} --config {config} wal-push --server src %p"})
    moto: MotoServer | None = None
    agent: subprocess.Popen[str] | None = None
    try:
        copy_where: str | S3Location
        if args.s3:
            moto = MotoServer(free_port(), root / "moto.log")
            moto.start()
            moto.create_bucket(BUCKET)
            endpoint = moto.endpoint
            credentials = root / "s3.env"
            credentials.write_text("AWS_ACCESS_KEY_ID=bench\nAWS_SECRET_ACCESS_KEY=bench\n")
            credentials.chmod(0o600)
            chown_to(credentials, OS_USER)
            copy_section = (f'url = "s3://{BUCKET}/markship"\nendpoint = "{endpoint}"\n'
                            f'region = "us-east-1"\ncredentials_file = "{credentials}"\n')
            copy_where = S3Location(f"s3://{BUCKET}/markship", endpoint, "us-east-1",
                                    str(credentials))
        else:
            copy_section = f'path = "{root / "copy"}"\n'
            copy_where = str(root / "copy")
        config.write_text(
            f'[group]\nname = "bench"\n\n[repository]\npath = "{root / "repo"}"\n'
            f'os_user = "{OS_USER}"\n\n[[repository.copy]]\nname = "offsite"\n{copy_section}'
            f'\n[marks]\ninterval = 5\n\n[[server]]\nname = "src"\n'
            f'conninfo = "{server.conninfo()}"\ndata_dir = "{server.data_dir}"\n')
        config.chmod(0o644)
        say(f"server, pgbench -i -s {args.scale}, base backup")
        server.initdb()
        server.start()
        server.run("pgbench", "-i", "-q", "-s", str(args.scale), "-h", server.host, "-p",
                   str(server.port), "postgres")
        subprocess.run([str(MARKSHIP), "--config", str(config), "backup", "--json"],
                       check=True, capture_output=True)
        primary, copy = open_repository(str(root / "repo")), open_repository(copy_where)
        agent = subprocess.Popen([str(MARKSHIP), "--config", str(config), "run"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        caught_up(primary, copy, "the base backup")  # the agent's first rounds
        say(f"pgbench -c 4 for {args.duration:g} s, the copy's lag sampled every 0.5 s")
        load = subprocess.Popen([pg("pgbench"), "-n", "-c", "4", "-j", "2", "-T",
                                 str(int(args.duration)), "-h", server.host, "-p",
                                 str(server.port), "-U", "postgres", "postgres"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds: list[float] = []
        objects: list[int] = []
        while load.poll() is None:
            behind = lag(primary, copy)
            seconds.append(behind.oldest_seconds)
            objects.append(behind.objects)
            time.sleep(0.5)
        catch_up = caught_up(primary, copy, "the load")
        results: dict[str, Any] = {
            "copy": "s3 (moto)" if args.s3 else "directory", "duration_s": args.duration,
            "samples": len(seconds), "behind_s_p50": pct(seconds, 50),
            "behind_s_p95": pct(seconds, 95), "behind_s_max": max(seconds),
            "objects_behind_max": max(objects), "catch_up_after_load_s": round(catch_up, 2),
            "wal_objects": sum(1 for o in primary.iter_objects("wal/"))}
        print()
        print_table(["copy", "samples", "behind p50 s", "p95 s", "max s", "max objects",
                     "caught up after load s"],
                    [[results["copy"], str(len(seconds)), f"{results['behind_s_p50']:.1f}",
                      f"{results['behind_s_p95']:.1f}", f"{results['behind_s_max']:.1f}",
                      str(results["objects_behind_max"]), f"{catch_up:.1f}"]])
        save_results(results, "copy-lag-")
        return 0
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.communicate(timeout=60)
        server.stop(mode="immediate")
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
