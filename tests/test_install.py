"""markship installed the ways Python people install it: a wheel and an sdist built with
`python -m build`, the wheel put into a fresh virtualenv (which then runs `markship demo`), and
`pipx install` / `uv tool install` into directories the PostgreSQL OS user can run from.

The runtime dependencies come from the package index, pinned by requirements.lock (the versions
`./dev` installs); pipx and uv go into a throwaway virtualenv of the test, never system-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from markship import __version__
from markship.pg.scratch import as_user

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
LAUNCHER = ROOT / "launcher" / "markship"
SYSTEM_PYTHON = "/usr/bin/python3"  # a Python the postgres user can execute (not /root/...)
# The installers this test drives; pinned here because only this test uses them.
INSTALLERS = ["pipx==1.18.4", "uv==0.13.9"]
SUCCESS = "✓ the whole group is back at one consistent point"


def run(argv: list[str], *, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A command that must succeed; its output is in the assertion message when it does not."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (f"{' '.join(argv)}: exit {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The sdist and the wheel of this checkout, the wheel built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    yield (out / f"markship-{__version__}.tar.gz",
           out / f"markship-{__version__}-py3-none-any.whl")


def installed_body(executable: Path) -> str:
    """An installed markship command without its first line (the installer's shebang)."""
    return executable.read_text().split("\n", 1)[1]


def test_the_sdist_and_the_wheel_carry_the_package_and_its_launcher(
        dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "requirements.lock", "launcher/markship",
            "src/markship/wal/push.py"} <= names
    with zipfile.ZipFile(wheel) as whl:
        script = whl.read(f"markship-{__version__}.data/scripts/markship").decode()
        names = set(whl.namelist())
    assert {"markship/_entry.py", "markship/wal/push.py", "markship/py.typed"} <= names
    # installers point `#!python` at their interpreter and keep the rest: the command
    # PostgreSQL starts is this file whichever installer wrote it
    assert script.startswith("#!python\n")
    assert script.split("\n", 1)[1] == LAUNCHER.read_text().split("\n", 1)[1]
    assert not any(name.endswith("entry_points.txt") for name in names)


def test_the_wheel_in_a_fresh_venv_runs_the_demo(dists: tuple[Path, Path],
                                                 workdir: Path) -> None:
    _, wheel = dists
    venv = workdir / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(LOCK), str(wheel)])
    markship = venv / "bin" / "markship"
    assert installed_body(markship) == installed_body(LAUNCHER)

    # The demo's servers archive with this venv's markship, run by the postgres user: its
    # backup set completes only once that archive_command stored the backups' WAL.
    demo = run([str(markship), "demo"], env={"COLUMNS": "200"}, timeout=900)

    assert SUCCESS in demo.stdout
    assert demo.stdout.rstrip().endswith("demo servers stopped and files removed")


def test_pipx_and_uv_tool_installs_run_as_the_postgres_user(dists: tuple[Path, Path],
                                                            workdir: Path) -> None:
    _, wheel = dists
    tools = workdir / "installers"
    run([SYSTEM_PYTHON, "-m", "venv", str(tools)])
    run([str(tools / "bin" / "pip"), "install", "-q", *INSTALLERS])
    pipx_env = {"PIPX_HOME": str(workdir / "pipx"), "PIPX_BIN_DIR": str(workdir / "pipx-bin"),
                "PIPX_MAN_DIR": str(workdir / "pipx-man")}
    run([str(tools / "bin" / "pipx"), "install", "--python", SYSTEM_PYTHON,
         "--pip-args", f"-c {LOCK}", str(wheel)], env=pipx_env)
    uv_env = {"UV_TOOL_DIR": str(workdir / "uv-tools"), "UV_TOOL_BIN_DIR": str(workdir / "uv-bin"),
              "UV_PYTHON_DOWNLOADS": "never"}
    run([str(tools / "bin" / "uv"), "tool", "install", "--python", SYSTEM_PYTHON,
         "--compile-bytecode", "-c", str(LOCK), str(wheel)], env=uv_env)

    for markship in (workdir / "pipx-bin" / "markship", workdir / "uv-bin" / "markship"):
        assert installed_body(markship) == installed_body(LAUNCHER)
        # archive_command runs as the PostgreSQL OS user: it must be able to start this one
        proc = run(as_user([str(markship), "wal-push", "--help"], "postgres"))
        assert proc.stdout.startswith("usage: markship wal-push --server NAME PATH")
        version = run(as_user([str(markship), "--version"], "postgres"))
        assert __version__ in version.stdout
    # that user cannot write bytecode into root's venv: without it compiled at install time,
    # every wal-push would compile the WAL modules again
    pycache = next((workdir / "uv-tools" / "markship").glob("lib/python3*/site-packages"))
    assert list((pycache / "markship" / "wal" / "__pycache__").glob("push.*.pyc"))
