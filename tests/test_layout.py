"""The layout keeps its promises: each stage folder says whether it may import torch, and the edge
folders (what runs on the inspection box) really import none; the top of the package stays small, no
function grows past a screen, and no two of our modules import each other (not even from inside a
function). docs/architecture.md describes the same layout."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgead"

# What may import torch: the workstation stages. Everything else runs on the edge box.
TORCH_FOLDERS = {"model", "training", "export", "demo"}
EDGE_FOLDERS = {"backends", "capture", "data", "decide", "runtime", "signals"}
TORCH_ON_REQUEST = {"edgead.backends.reference"}   # the Torch reference detector, imported only when asked for
TOP_MODULES_MAX = 7
FUNCTION_LINES_MAX = 80


def _folders() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def _modules(folder: Path) -> list[str]:
    return sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)
                  for p in folder.glob("*.py") if p.name != "__init__.py")


def test_every_folder_is_an_edge_or_a_torch_stage_and_says_which():
    assert _folders() == TORCH_FOLDERS | EDGE_FOLDERS, "classify the new folder here and in docs/architecture.md"
    for name in sorted(_folders()):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "torch" in doc, f"edgead/{name}/__init__.py must say whether the folder may import torch"
        if name in EDGE_FOLDERS:
            assert "edge path" in doc.lower(), f"edgead/{name}/__init__.py must say it is on the edge path"


@pytest.mark.parametrize("folder", sorted(EDGE_FOLDERS))
def test_edge_folders_import_no_torch(folder):
    modules = [m for m in _modules(PACKAGE / folder) if m not in TORCH_ON_REQUEST]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "bad = [m for m in ('torch', 'matplotlib', 'tensorrt') if m in sys.modules]\n"
            + "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_top_level_modules_of_the_edge_path_import_no_torch():
    modules = [m for m in _modules(PACKAGE)]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "assert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_top_of_the_package_holds_few_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_MODULES_MAX, top


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > FUNCTION_LINES_MAX:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def _imports(path: Path, module: str) -> set[str]:
    """Every edgead module `path` imports, at the top or inside a function (not for type checking only)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgead.")}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else ".".join(
                package.split(".")[:len(package.split(".")) - node.level + 1] + [node.module])
            if base.startswith("edgead"):
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def test_no_import_cycles_between_our_modules():
    """Submodules import their siblings, never the package that re-exports them, so no cycle hides in a function."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = _imports(path, module)
    for module in graph:
        graph[module] = {m for m in graph[module] if m in graph and m != module}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert not cycles, cycles[0]


@functools.lru_cache(maxsize=None)
def _defined_names(module: str) -> frozenset[str] | None:
    """Names a module of ours defines at its top (functions, classes, assignments, imports); None if not ours."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not path.is_file():
        return None
    names = {p.stem for p in base.glob("*.py")} | {p.name for p in base.iterdir() if p.is_dir()} if base.is_dir() else set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return frozenset(names)


def test_every_name_imported_from_our_modules_exists():
    """A name removed from a module breaks an import inside a function only when that function runs: catch it here,
    for the package, the benchmarks and the tests."""
    root = PACKAGE.parent
    missing = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(root / "benchmarks").rglob("*.py"), *(root / "tests").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == "edgead"):
                continue
            names = _defined_names(node.module)
            if names is None:
                missing.append(f"{path.relative_to(root)}:{node.lineno} no module {node.module}")
                continue
            missing += [f"{path.relative_to(root)}:{node.lineno} {node.module} has no {a.name}"
                        for a in node.names if a.name != "*" and a.name not in names]
    assert not missing, missing
