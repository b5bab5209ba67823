"""Start-up cost of the per-segment WAL commands, this install against others.

PostgreSQL starts `markship wal-push` once per 16 MB segment and `markship wal-fetch` once per
segment replayed, so their process start-up is paid thousands of times an hour. This bench
runs, alternately in the same run, each install's executable on the same work:

- `wal-push --help`: interpreter, launcher, entry point and the WAL package's imports, nothing
  else;
- `wal-push` of a 16 MiB segment already stored (exit 0): the above plus the cached settings,
  the repository opened and the segment read and hashed to recognise the stored copy;
- `wal-fetch` of a segment that is not archived (exit 1): the settings, the OS-user switch
  check, opening the repository and the not-found path.

    python bench/startup_bench.py --baseline /opt/markship/venv-old/bin/markship [--runs 60]
    python bench/startup_bench.py --install pipx=/opt/pipx/bin/markship \
        --install plain-pip=/tmp/v/bin/markship --runs 40

"this" is the markship beside the Python running the bench. Prints the median and p90 in
milliseconds of each install, the ratio to "this" (≤ 1.05 is "no difference beyond noise":
single runs vary by several percent on a shared machine) and the load average before and
after. Warm page cache (it cannot be dropped here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(sys.executable).parent / "markship"
SEGMENT = "000000010000000000000042"
STORED = "000000010000000000000041"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]}: exit {proc.returncode}: {proc.stderr.decode().strip()}")
    return elapsed * 1000


def setup(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "markship.json").write_text('{"format": 1}\n')
    config = root / "markship.toml"
    user = os.environ.get("USER") or "root"
    config.write_text(
        '[group]\nname = "bench"\n\n'
        f'[repository]\npath = "{repo}"\nos_user = "{user}"\n\n'
        '[[server]]\nname = "orders"\n'
        'conninfo = "host=127.0.0.1 port=1 user=postgres dbname=postgres"\n')
    (root / STORED).write_bytes(os.urandom(16 << 20))
    return config


def install(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=PATH of a markship executable")
    return name, Path(path)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a markship executable to compare with")
    parser.add_argument("--install", type=install, action="append", default=[],
                        metavar="NAME=PATH", help="another markship executable (repeatable)")
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    installs = {"this": HERE}
    if args.baseline:
        installs["baseline"] = args.baseline
    installs.update(dict(args.install))
    if len(installs) < 2:
        parser.error("give --baseline or --install NAME=PATH")
    root = Path(tempfile.mkdtemp(prefix="markship-startup-"))
    load_before = load()
    try:
        config = setup(root)
        env = {**os.environ, "MARKSHIP_CONFIG": str(config)}
        stored = str(root / STORED)
        subprocess.run([str(HERE), "wal-push", "--server", "orders", stored], env=env,
                       check=True)
        work = {
            "wal-push --help": ["wal-push", "--help"],
            "wal-push (already stored)": ["wal-push", "--server", "orders", stored],
            "wal-fetch (not archived)": ["wal-fetch", "--server", "orders", SEGMENT,
                                         str(root / "dest")],
        }
        samples: dict[tuple[str, str], list[float]] = {}
        for what, tail in work.items():
            for exe in installs.values():  # warm the page cache and the settings cache
                timed([str(exe), *tail], env)
            for _ in range(args.runs):
                for name, exe in installs.items():
                    samples.setdefault((what, name), []).append(timed([str(exe), *tail], env))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.runs} runs each, alternating; load average {load_before} before, {load()} "
          "after; warm page cache")
    for name, exe in installs.items():
        print(f"  {name}: {exe}")
    print(f"{'command':28} {'install':12} {'median ms':>9} {'p90 ms':>7} {'ratio':>6}")
    for what in work:
        mine = statistics.median(samples[(what, "this")])
        for name in installs:
            got = samples[(what, name)]
            p90 = statistics.quantiles(got, n=10)[-1]
            print(f"{what:28} {name:12} {statistics.median(got):9.1f} {p90:7.1f} "
                  f"{statistics.median(got) / mine:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
