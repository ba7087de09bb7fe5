"""The architecture, as the imports show it: no import cycle anywhere among the project's modules,
and each layer imports only what it may (the domain neither Flask nor Redis; the read side
never Flask; nothing below the entry points reaches up to them or to the composition root)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "audit", "projections", "api", "web", "cli")
MODULES = ("bootstrap",)
ENTRY_POINTS = (
    "bootstrap",
    "api",
    "web",
    "cli",
)  # what builds and serves; nothing below imports it


def project_modules() -> dict[str, Path]:
    found = {name: ROOT / f"{name}.py" for name in MODULES if (ROOT / f"{name}.py").exists()}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """Every module this one imports, anywhere in it (TYPE_CHECKING blocks and functions too):
    the project's own by module name, anything else by its top-level name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from package import module` imports the module itself
            submodules = {f"{base}.{alias.name}" for alias in node.names}
            names.update(submodules & known.keys() or {base})
    resolved = set()
    for name in names:
        while name and name not in known and "." in name:
            name = name.rpartition(".")[0]
        resolved.add(name if name in known else name.partition(".")[0])
    return resolved - {module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {module: imports_of(path, module, known) for module, path in known.items()}


def test_the_project_has_no_import_cycle(graph):
    internal = {module: deps & graph.keys() for module, deps in graph.items()}
    try:
        TopologicalSorter(internal).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_the_cycle_check_finds_a_cycle():
    with pytest.raises(CycleError):
        TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).prepare()


def test_the_graph_sees_the_project_and_its_imports(graph):
    assert {"ledger.application", "projections.writer", "api.app", "cli.main"} <= graph.keys()
    assert "ledger.events" in graph["ledger.domainmodel"]
    assert "flask" in graph["api.app"]


# The app factory serves the API and the pages from one process, so it registers the pages:
# the one import of web from api. Nothing else in api knows the pages exist.
COMPOSED = {("api.app", "web")}


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("ledger", {"flask", "redis", "fakeredis", "projections", "audit", *ENTRY_POINTS}),
        ("audit", {"flask", "redis", "projections", *ENTRY_POINTS}),
        ("projections", {"flask", "audit", *ENTRY_POINTS}),
        ("api", {"cli", "web"}),
        ("web", {"cli"}),
    ],
)
def test_each_layer_imports_only_what_it_may(graph, layer, forbidden):
    forbidden = (
        forbidden | {"bootstrap"} if layer in ("ledger", "audit", "projections") else forbidden
    )
    offending = {
        (module, dep)
        for module, deps in graph.items()
        if module.partition(".")[0] == layer
        for dep in deps
        if dep.partition(".")[0] in forbidden and (module, dep) not in COMPOSED
    }
    assert not offending
