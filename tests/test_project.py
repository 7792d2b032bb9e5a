"""Facts about the project as a whole: the Python floor it declares, its module graph, and that a
clone stands alone (nothing outside the repository is read, no machine's absolute path)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "providers", "models")
#: Standard-library modules newer than some Python 3 release: (module, first version with it).
NEWER_STDLIB = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}
#: The node modules `providers/` may import: leaves that never import `providers/` themselves.
PROVIDER_MAY_IMPORT = {"node.errors", "node.backoff", "node.personas", "node.media", "node.config"}


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (a lazy import inside a function counts too)."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _sources(*PACKAGES)}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_declared_python_floor_covers_the_code():
    # Given the floor pyproject.toml declares
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups())
    # Then this interpreter (the one `make test` runs) satisfies it ...
    assert sys.version_info[:2] >= floor
    for path in _sources(*PACKAGES, "scripts", "bench", "tests"):
        # ... every file parses with that version's grammar ...
        ast.parse(path.read_text(), filename=str(path), feature_version=floor)
        # ... and imports no standard-library module newer than it
        for module in _imports(path):
            needs = NEWER_STDLIB.get(module)
            assert needs is None or needs <= floor, f"{path.name} imports {module} (Python {needs}) under {spec}"


def test_no_import_cycle_between_modules():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                # a package importing its own submodules is how packages re-export: not a cycle
                cycle = stack[stack.index(dep):] + [dep]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_providers_reach_only_the_nodes_leaf_modules():
    for name, deps in _graph().items():
        if name.startswith("providers"):
            reached = {d for d in deps if d.startswith("node")}
            assert reached <= PROVIDER_MAY_IMPORT, f"{name} imports {sorted(reached - PROVIDER_MAY_IMPORT)}"


def test_models_are_free_of_runtime_concerns():
    for name, deps in _graph().items():
        if name.startswith("models"):
            assert not {d for d in deps if d.startswith(("node", "providers"))}, name
    for path in _sources("models"):
        text = path.read_text()
        for banned in ("os.environ", "getenv", "import redis", "import httpx", "logging.basicConfig"):
            assert banned not in text, f"{path.relative_to(REPO)} uses {banned}"


@pytest.mark.parametrize("pattern", [r"/work/", r"\.\./shared", r"parent / \"shared\"", r"/home/\w+/"])
def test_a_clone_reads_nothing_outside_itself(pattern):
    # the files a clone has: tracked ones, and new ones git does not ignore
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    offenders = []
    for path in (REPO / name for name in listed):
        if (not path.is_file() or path.suffix not in {".py", ".sh", ".toml", ".cfg", ".yml", ".yaml", ".json", ""}
                or path == Path(__file__)):
            continue
        text = path.read_text(errors="ignore")
        if re.search(pattern, text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
