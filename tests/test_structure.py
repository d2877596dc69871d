"""The package's shape: no import cycle, small modules, no module-level ``__getattr__``, one
version."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import statmech_nn

PACKAGE = Path(statmech_nn.__file__).resolve().parent
ROOT = PACKAGE.parent
MAX_LINES = 450


def module_name(path: Path) -> str:
    """The dotted name of a source file of the package (``__init__`` names its package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:`` (imports for the type checker)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_statements(body: list[ast.stmt]):
    """The import statements that run when the module is imported (not in functions or classes)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from import_time_statements(node.body)
            yield from import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from import_time_statements(block)
            for handler in node.handlers:
                yield from import_time_statements(handler.body)


def imported_modules(name: str, tree: ast.Module) -> set[str]:
    """Our modules that importing ``name`` imports directly (with their packages)."""
    is_package = SOURCES[name].name == "__init__.py"
    found: set[str] = set()
    for node in import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base
                for alias in node.names
            ]
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in SOURCES and m != name and m not in own_packages}


@functools.cache
def trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text()) for name, path in SOURCES.items()}


def external_imports(tree: ast.Module) -> set[str]:
    """The top-level names of the other packages a module imports at import time."""
    found = set()
    for node in import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"statmech_nn", "__future__"}


def imported_with(name: str, graph: dict[str, set[str]]) -> set[str]:
    """``name`` and every module of ours that importing it imports (transitively)."""
    seen, todo = {name}, [name]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, tree) for name, tree in trees().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path of names, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_import_graph_sees_our_imports():
    graph = import_graph()
    assert len(graph) > 50
    assert "statmech_nn.naming" in graph["statmech_nn.snp.dataset"]
    assert all(m.startswith("statmech_nn") for edges in graph.values() for m in edges)


def test_no_import_cycle_at_import_time():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_bottom_layer_imports_almost_nothing_of_ours():
    graph = import_graph()
    assert graph["statmech_nn.errors"] == set()
    assert graph["statmech_nn.fileio"] <= {"statmech_nn.errors"}
    assert graph["statmech_nn.naming"] == {"statmech_nn.errors"}
    importers = {name for name, edges in graph.items() if "statmech_nn.commands" in edges}
    assert importers <= {"statmech_nn.cli"}, importers


def test_the_snp_science_imports_no_io():
    """Importing the SNP engine (and the order parameters) loads neither MLflow nor netCDF."""
    graph = import_graph()
    for name in ("statmech_nn.snp.engine", "statmech_nn.snp", "statmech_nn.order"):
        modules = imported_with(name, graph)
        io = {m: external_imports(trees()[m]) & {"mlflow", "h5netcdf", "netCDF4"} for m in modules}
        assert {m: found for m, found in io.items() if found} == {}, name
    assert {"torch", "xarray"} <= external_imports(trees()["statmech_nn.snp.dataset"])


FORKED_IMPORTS = """
import importlib, os, sys, traceback
names = sys.argv[1].split(',')
for outside in sys.argv[2].split(','):
    try:
        importlib.import_module(outside)
    except Exception:
        pass
assert not [m for m in sys.modules if m.startswith('statmech_nn')], 'ours imported too early'
failed = []
for name in names:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            sys.stderr.write(name + ': ' + traceback.format_exc().strip().splitlines()[-1] + '\\n')
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print('\\n'.join(failed))
"""


def external_dotted_imports(tree: ast.Module) -> set[str]:
    """The full dotted names of the other packages' modules a module imports at import time."""
    found = set()
    for node in import_time_statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif not node.level and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] not in ("statmech_nn", "__future__")}


@pytest.mark.slow  # ~30 s: every module imported once more
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_first_in_a_fresh_interpreter():
    """What the static graph promises: each module imports alone, before any other of ours.

    One interpreter imports the other packages ours use, then forks once per module, so each
    child starts with none of ours loaded and importing torch is paid once, not 150 times.
    """
    outside = sorted(set().union(*(external_dotted_imports(tree) for tree in trees().values())))
    names = sorted(m for m in SOURCES if m != "statmech_nn.__main__")
    done = subprocess.run(
        [sys.executable, "-c", FORKED_IMPORTS, ",".join(names), ",".join(outside)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stderr


def test_every_module_is_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in SOURCES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_module_level_getattr():
    """Old import paths stay working through plain imports, never a lazy ``__getattr__``."""
    found = [
        name
        for name, tree in trees().items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in ("__getattr__", "__dir__")
    ]
    assert found == []


def test_the_version_has_one_source(capsys):
    from statmech_nn import cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "statmech_nn.__version__"}
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"statmech-nn {statmech_nn.__version__}"


def test_the_methods_are_cited_from_the_checkout():
    """A user's clone has docs/methods.md, not the specification it was written from."""
    outside = ("METHODS.md", "shared/", "cct.md")
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    files += [*(ROOT / "tests").rglob("*.py"), *(ROOT / "studies").rglob("*.py")]
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        if path.name != "test_structure.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(name in line for name in outside)
    ]
    assert cited == []
    assert (ROOT / "docs" / "methods.md").is_file()
