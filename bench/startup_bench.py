"""Start-up cost of the per-segment WAL commands, this install against another one.

PostgreSQL starts `markship wal-push` once per 16 MB segment and `markship wal-fetch` once per
segment replayed, so their process start-up is paid thousands of times an hour. This bench
runs, alternately in the same run, the two installs' executables on the same work:

- `wal-push --help`: interpreter, entry point and the WAL package's imports, nothing else;
- `wal-fetch` of a segment that is not archived (exit 1): the above plus the cached settings,
  the OS-user switch check, opening the repository and the not-found path.

    python bench/startup_bench.py --baseline /opt/markship/venv-old/bin/markship [--runs 60]

Prints the median and p90 in milliseconds for each and the ratio this/baseline (≤ 1.05 is
"no regression beyond noise"; single runs vary by several percent on a shared machine).
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
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path,
                        help="the markship executable to compare with")
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="markship-startup-"))
    try:
        config = setup(root)
        env = {**os.environ, "MARKSHIP_CONFIG": str(config)}
        dest = root / "dest"
        work = {
            "wal-push --help": ["wal-push", "--help"],
            "wal-fetch (not archived)": ["wal-fetch", "--server", "orders", SEGMENT, str(dest)],
        }
        installs = {"this": HERE, "baseline": args.baseline}
        samples: dict[tuple[str, str], list[float]] = {}
        for what, tail in work.items():
            for exe in installs.values():  # warm the page cache and the settings cache
                timed([str(exe), *tail], env)
            for _ in range(args.runs):
                for name, exe in installs.items():
                    samples.setdefault((what, name), []).append(timed([str(exe), *tail], env))
        print(f"{'command':28} {'this ms':>9} {'baseline ms':>12} {'ratio':>7}   (median; p90)")
        for what in work:
            mine, base = samples[(what, "this")], samples[(what, "baseline")]
            p90 = [statistics.quantiles(s, n=10)[-1] for s in (mine, base)]
            ratio = statistics.median(mine) / statistics.median(base)
            print(f"{what:28} {statistics.median(mine):9.1f} {statistics.median(base):12.1f} "
                  f"{ratio:7.2f}   p90 {p90[0]:.1f} / {p90[1]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
