"""The reliability table: tests marked `reliability` are the cases of docs/reliability.md.

Mark a test with what it injects and what must hold::

    @pytest.mark.reliability("wal-fetch, object encrypted for another key",
                             fault="restore with only the old identity",
                             expected="exit >= 126, recovery never promotes short")

`pytest --reliability-doc=docs/reliability.md` writes the table (case, fault, expected, result)
from the run's outcomes; without the option nothing is written. (One token, with `=`: given
as two, an existing PATH is taken for a test path before this plugin is loaded.)
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pytest

HEADER = """# Reliability: the fault table

Each row is a test of markship's suite that injects one fault (a killed process, a full or
read-only repository, a wrong key, hostile input, a damaged record) and checks what must hold
afterwards. This page is written by the test run itself:
`./dev test --reliability-doc=docs/reliability.md` (results of the run on {when}).

| # | case | fault | expected | result | test |
|---|---|---|---|---|---|
"""


@dataclass
class Case:
    case: str
    fault: str
    expected: str
    nodeid: str
    result: str = "not run"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--reliability-doc", default=None, metavar="PATH",
                     help="write the reliability table of the marked tests to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability(case, fault, expected): a case of docs/reliability.md")
    config.stash[_CASES] = {}


_CASES = pytest.StashKey[dict[str, Case]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cases = config.stash[_CASES]
    for item in items:
        for marker in item.iter_markers("reliability"):
            case = marker.args[0] if marker.args else item.name
            cases[item.nodeid] = Case(str(case), str(marker.kwargs.get("fault", "")),
                                      str(marker.kwargs.get("expected", "")), item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    case = item.config.stash[_CASES].get(item.nodeid)
    if case is not None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            case.result = ("skipped" if report.skipped
                           else "pass" if report.passed else "FAIL")
        elif report.when == "teardown" and report.failed:
            case.result = "FAIL (teardown)"
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = session.config.getoption("--reliability-doc")
    if not target:
        return
    from datetime import UTC, datetime

    cases = sorted(session.config.stash[_CASES].values(), key=lambda c: c.nodeid)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [HEADER.format(when=when)]
    for number, case in enumerate(cases, 1):
        cells = [str(number), case.case, case.fault, case.expected, case.result,
                 f"`{case.nodeid}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |\n")
    passed = sum(c.result == "pass" for c in cases)
    lines.append(f"\n{passed} of {len(cases)} cases pass.\n")
    Path(target).write_text("".join(lines))
