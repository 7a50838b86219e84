"""dvc.yaml's `deps` come from the code: for every stage, the repo modules its command runs
(found from the imports, transitively, by AST: module-level and function-level imports alike)
must all be listed, so a change to any of them makes `dvc repro` rerun the stage.

What a stage runs: `python -m PKG SUB ...` (or `iwarp data SUB ...`, the same command) dispatches
through PKG/cli.py to its function `_cmd_SUB`; that function's imports are the roots. The
dispatcher itself (cli.py, __main__.py, package __init__.py) only parses arguments and is left out
on purpose: a new flag on one subcommand should not rerun every stage. A `python -m MOD` without
such a dispatcher roots at MOD (or MOD/__main__.py) itself."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def module_file(name: str) -> Path | None:
    """Dotted module name -> its file in the repo (None for third-party or stdlib)."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(node: ast.AST, path: Path) -> set[str]:
    """Repo modules imported anywhere under `node` (relative imports resolved against `path`)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                anchor = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                base = ".".join(anchor + ([n.module] if n.module else []))
            # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg
            names = [f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base for a in n.names]
        else:
            continue
        found.update(name for name in names if module_file(name))
    return found


def closure(roots: set[str]) -> set[Path]:
    """Files of `roots` and of everything they import, transitively (package __init__ files,
    which only re-export lazily here, are not followed as dependencies themselves)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        todo.extend(imports_of(ast.parse(path.read_text()), path))
    return {module_file(n) for n in seen if module_file(n).name != "__init__.py"}


def stage_roots(cmd: str) -> set[str]:
    """The repo modules a stage command runs (see the module docstring)."""
    argv = shlex.split(cmd)
    if argv[:2] == ["iwarp", "data"]:  # the console script's `data` area is `python -m iwarp.data`
        argv = ["python", "-m", "iwarp.data", *argv[2:]]
    if argv[0] not in ("python", "python3") or argv[1] != "-m":
        raise AssertionError(f"stage command {cmd!r}: teach this test which modules it runs")
    module, sub = argv[2], argv[3] if len(argv) > 3 else ""
    cli = module_file(f"{module}.cli")
    if cli is not None and sub:
        tree = ast.parse(cli.read_text())
        handlers = [
            f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == f"_cmd_{sub.replace('-', '_')}"
        ]
        assert handlers, f"{cli.relative_to(REPO)} has no _cmd_{sub} for stage command {cmd!r}"
        return imports_of(handlers[0], cli)
    main = module_file(f"{module}.__main__") or module_file(module)
    assert main is not None, f"stage command {cmd!r} runs {module}, which is not in the repo"
    return {module_name(main)}


def covered(dep: str, path: Path) -> bool:
    """A listed dep covers a file when it is the file or a folder above it."""
    rel = path.relative_to(REPO)
    return rel == Path(dep) or Path(dep) in rel.parents


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_list_every_module_its_command_runs(name):
    stage = stages()[name]
    deps = [d for d in stage.get("deps", []) if "${" not in d]  # templated data inputs are not code
    needed = closure(stage_roots(" ".join(stage["cmd"].split())))
    assert needed, f"stage {name}: found no repo module for {stage['cmd']!r}"
    missing = sorted(str(p.relative_to(REPO)) for p in needed if not any(covered(d, p) for d in deps))
    assert not missing, f"dvc.yaml stage {name!r} runs these modules but does not list them in deps: {missing}"


def test_the_analysis_follows_function_level_and_relative_imports():
    """The derivation itself: stats's command reaches video.py only through imports inside
    functions, and a folder dep covers the files under it."""
    roots = stage_roots("python -m iwarp.data stats --data x --out y")
    assert roots == {"iwarp.data.stats"}
    files = {str(p.relative_to(REPO)) for p in closure(roots)}
    assert {"iwarp/data/stats.py", "iwarp/data/manifest.py", "iwarp/data/video.py"} <= files
    assert "iwarp/data/cli.py" not in files and "iwarp/data/s3.py" not in files
    assert covered("iwarp/data", REPO / "iwarp/data/video.py") and not covered(
        "iwarp/data/video.py", REPO / "iwarp/data/stats.py"
    )
    with pytest.raises(AssertionError, match="teach this test"):
        stage_roots("bash -c 'make data'")
