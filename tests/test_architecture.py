"""The tree is the architecture: task packages whose imports point only down, no cycles, empty
package `__init__` files, SQL sent only from markship.pg. Read with ast from the source, so
nothing is imported to check it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "markship"

# Highest first. A module may import its own package and any package below its own.
LAYERS = ["_entry", "cli", "agent", "monitor", "dr", "backup", "marks", "wal", "repository", "pg",
          "config", "shared"]
# Leaves every layer may use: they import only each other (and the standard library or
# third-party packages). `client` is the applications' 2PC helper, a public import path.
SHARED = {"__init__", "errors", "timefmt", "osuser", "names", "privatefile", "perserver", "argv",
          "client", "barrierkey", "userspool"}

def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)

def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}

def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "shared"
    top = parts[1]
    if top in SHARED:
        return "shared"
    if top in LAYERS:
        return top
    raise AssertionError(f"{module}: not in a package of the layering rule; add it to a layer")

def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported markship module) for every import in the file, lazy ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "markship":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "markship":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in known else target

def graph() -> dict[str, list[tuple[int, str]]]:
    found = modules()
    known = set(found)
    return {name: [(line, target) for line, target in imports_of(name, path, known)
                   if target != name]
            for name, path in found.items()}

def test_every_module_sits_in_a_layer() -> None:
    for name in modules():
        layer_of(name)  # raises for a module outside the rule

def test_imports_point_only_down() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for name, edges in graph().items():
        mine = layer_of(name)
        for line, target in edges:
            theirs = layer_of(target)
            if rank[theirs] < rank[mine]:
                upward.append(f"{modules()[name].relative_to(SRC.parent)}:{line}: "
                              f"{name} ({mine}) imports {target} ({theirs})")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)

def test_no_import_cycles() -> None:
    edges = {name: {t for _line, t in targets} for name, targets in graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "markship":
                continue  # the package's own __init__ (its __version__) imports nothing
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)

def test_package_init_files_hold_only_a_docstring() -> None:
    """An `__init__.py` runs on every import below it: the WAL path must pay for nothing."""
    crowded = []
    for path in SRC.rglob("__init__.py"):
        body = ast.parse(path.read_text()).body
        rest = body[1:] if body and isinstance(body[0], ast.Expr) else body
        if path.parent == SRC:  # the top package also carries its version string
            rest = [n for n in rest if not (isinstance(n, ast.Assign)
                                            and ast.unparse(n.targets[0]) == "__version__")]
        if rest:
            crowded.append(str(path.relative_to(SRC.parent)))
    assert not crowded, f"code in package __init__ files: {crowded}"

def test_the_rule_itself_sees_a_violation(tmp_path: Path) -> None:
    """The checker is not blind: an upward import written in a file is found."""
    probe = tmp_path / "markship" / "pg" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from markship.dr import failover\n")
    found = list(imports_of("markship.pg.probe", probe, {"markship.dr.failover"}))
    assert found == [(2, "markship.dr.failover")]
    assert layer_of("markship.dr.failover") == "dr"
    assert LAYERS.index("dr") < LAYERS.index("pg")


SQL_CALLS = {"execute", "executemany", "cursor", "exec_"}
"""Methods that send SQL: psycopg's connections and cursors, libpq's pgconn."""


def sql_calls(path: Path) -> Iterator[int]:
    """Lines of `path` that call a method sending SQL."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in SQL_CALLS:
            yield node.lineno


def test_only_pg_and_client_send_sql() -> None:
    """SQL has one owner, markship.pg; markship.client, the applications' two-phase commit
    helper, stays standalone with its own."""
    outside = [f"{path.relative_to(SRC.parent)}:{line}"
               for name, path in modules().items()
               if layer_of(name) != "pg" and name != "markship.client"
               for line in sql_calls(path)]
    assert not outside, "SQL sent outside markship.pg:\n" + "\n".join(outside)


def test_the_sql_rule_sees_a_sender(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f(conn):\n    return conn.execute('SELECT 1').fetchone()\n")
    assert list(sql_calls(probe)) == [2]


DOC = SRC.parent.parent / "docs" / "architecture.md"
BEGIN, END = "<!-- imports:begin -->", "<!-- imports:end -->"


def package_table() -> str:
    """The package-level import picture as a markdown table, highest layer first."""
    arrows: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for name, edges in graph().items():
        for _line, target in edges:
            if layer_of(target) != layer_of(name):
                arrows[layer_of(name)].add(layer_of(target))
    rows = ["| package | imports from |", "|---|---|"]
    for layer in LAYERS:
        below = sorted(arrows[layer], key=LAYERS.index)
        rows.append(f"| `{layer}` | {', '.join(f'`{b}`' for b in below) or '—'} |")
    return "\n".join(rows)


def test_the_architecture_page_shows_the_real_imports() -> None:
    text = DOC.read_text()
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == package_table(), (
        "docs/architecture.md's import table is stale: run python tests/test_architecture.py")


if __name__ == "__main__":  # rewrite the table in docs/architecture.md
    head, rest = DOC.read_text().split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{package_table()}\n{END}{rest.split(END, 1)[1]}")
