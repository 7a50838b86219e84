"""Layers point only down, and no two modules import each other (directly or round a loop).

The graph is read from every module's AST, so imports inside functions (the lazy ones that keep
`--help` fast) count as much as top-level ones, and so do `python -m PKG` subprocess command lines:
and so do module names in `COMMAND_MODULES` lists and `import_module("...")` calls: a dependency
the interpreter only meets at run time is still a dependency.

    iwarp  <-  serving  <-  deploy  <-  components  <-  pipelines  <-  app  <-  bench
  (library)  (TorchServe)  (cluster)   (KFP + MLflow)   (pipeline)    (CLI)   (scripts)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("iwarp", "serving", "deploy", "components", "pipelines", "app", "bench")  # bottom first
RANK = {name: i for i, name in enumerate(LAYERS)}
# Third-party packages a layer must not reach, even lazily (the tools belong to the layers above).
FORBIDDEN = {
    "iwarp": ("mlflow", "kfp", "kubeflow", "torchserve", "ts", "model_archiver", "kubernetes"),
    "serving": ("mlflow", "kfp", "kubeflow", "kubernetes"),
    "deploy": ("mlflow", "kfp"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def repo_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for layer in LAYERS
        if (ROOT / layer).is_dir()
        for p in sorted((ROOT / layer).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def _dynamic_targets(node: ast.AST) -> Iterator[str]:
    """Modules named in strings: `[sys.executable, "-m", "pkg", ...]` command lines, a
    `COMMAND_MODULES = ("pkg.cli", ...)`-style list, `importlib.import_module("pkg")`."""
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("MODULES") for t in node.targets):
        if isinstance(node.value, ast.List | ast.Tuple):
            yield from (e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.args[0].value
    if isinstance(node, ast.List | ast.Tuple):
        items = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
        for flag, target in zip(items, items[1:], strict=False):
            if flag == "-m" and target:
                yield target


def imported_names(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(dotted name, line) for every import anywhere in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*pkg, base] if base else pkg)
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno  # a submodule, or a name inside `base`
        else:
            for target in _dynamic_targets(node):
                yield target, node.lineno


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module of this repo, or None (stdlib, third party)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def build_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """Edges between repo modules, plus (module, third-party name, line) of every outside import."""
    modules = repo_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: list[tuple[str, str, int]] = []
    external: list[tuple[str, str, int]] = []
    for mod, path in modules.items():
        for name, line in imported_names(path, mod):
            target = resolve(name, modules)
            if target is None:
                external.append((mod, name, line))
            elif target != mod and not mod.startswith(target + "."):  # a package's own parents load anyway
                graph[mod].add(target)
                lines.append((mod, target, line))
    return graph, lines, external


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_the_graph_covers_every_layer_and_sees_lazy_imports(graph):
    edges, lines, _ = graph
    assert {layer(m) for m in edges} >= {"iwarp", "serving", "deploy", "components", "pipelines", "app"}
    # A function-level import (serving.cli imports serving.rollout inside its handler) is an edge.
    assert "serving.rollout" in edges["serving.cli"]
    # So is a `python -m` command line (the canary step runs `python -m deploy kserve`) and a
    # module named in the umbrella CLI's COMMAND_MODULES.
    assert "deploy" in edges["components.steps.kserve"]
    assert {"serving.cli", "deploy.cli", "pipelines.cli", "components.track_cli"} <= edges["app.cli"]


def test_no_layer_imports_a_layer_above_it(graph):
    _, lines, _ = graph
    upward = [f"{src}:{line} imports {dst}" for src, dst, line in lines if RANK[layer(dst)] > RANK[layer(src)]]
    assert upward == [], "upward imports (layers: " + " <- ".join(LAYERS) + "):\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    edges, _, _ = graph
    found = cycles(edges)
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_loop():
    """The checker itself: a three-module loop is one cycle; a chain is none."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_low_layers_never_import_the_mlops_tools_of_higher_ones(graph):
    """The library never imports MLflow, KFP or TorchServe's Python packages, not even lazily;
    serving never imports MLflow or KFP (it gets the registry through `iwarp.plugins`)."""
    _, _, external = graph
    bad = [
        f"{src}:{line} imports {name}"
        for src, name, line in external
        if name.split(".")[0] in FORBIDDEN.get(layer(src), ())
    ]
    assert bad == [], "\n".join(bad)


def test_declared_plugins_and_console_script_resolve():
    """The entry points in pyproject.toml (how MLflow reaches the library without an upward
    import, and the `iwarp` console script) name objects that exist, in the layer that provides them."""
    import importlib
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {**project["entry-points"], "console_scripts": project["scripts"]}
    assert set(groups) >= {"iwarp.trackers", "iwarp.model_registries", "console_scripts"}
    for group, entries in groups.items():
        for name, target in entries.items():
            module, _, attr = target.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), f"{group}:{name} -> {target}"
            if group.startswith("iwarp."):
                assert RANK[layer(module)] > RANK["iwarp"], f"{group}:{name} must come from a layer above iwarp"
    assert groups["console_scripts"]["iwarp"] == "app.cli:main"


def test_tests_are_in_tiers_and_import_only_helpers():
    """Every test file sits in a tier folder (its conftest marks it), and a test module imports
    shared code only from tests/helpers/: never another test module, never a conftest."""
    from tests.helpers.tiers import TIERS

    tests = ROOT / "tests"
    files = sorted(tests.rglob("test_*.py"))
    assert files, "no test files found"
    outside = [str(p.relative_to(tests)) for p in files if p.relative_to(tests).parts[0] not in TIERS]
    assert outside == [], f"test files outside the tiers {TIERS}: {outside}"
    assert all((tests / tier / "conftest.py").is_file() for tier in TIERS)
    local = {p.stem for p in tests.rglob("*.py")}  # a bare `import train_utils` was the old way
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in [*files, *sorted((tests / "helpers").glob("*.py"))]
        for name, line in imported_names(path, module_name(path))
        if name.split(".")[0] in local
        or (name.startswith("tests.") and not name.startswith("tests.helpers."))
        or any(part.startswith("test_") or part == "conftest" for part in name.split("."))
    ]
    assert bad == [], "test modules import only tests.helpers:\n" + "\n".join(bad)
