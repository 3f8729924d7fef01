"""The installed package's shape: no import circles, no fixtures, and a wheel that holds the library only."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "rose_hf")


def _modules(package: str = PACKAGE) -> dict[str, str]:
    """`{module name: file}` of every module of `package` (a folder)."""
    found = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """The rose_hf modules `module` imports anywhere in its file (function-level imports count too)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != module}
    return found


@pytest.mark.parametrize("package", ["rose_hf", "rose_fixtures", "benchmarks"])
def test_no_import_circles(package):
    modules = _modules(os.path.join(ROOT, package))
    graph = {m: _imports(m, p, set(modules)) - {package} for m, p in modules.items()}
    # A package's __init__ importing its own submodules lazily is not a circle of the design; drop parent edges.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_library_imports_no_fixture():
    for module, path in _modules().items():
        text = open(path).read()
        for outside in ("rose_fixtures", "benchmarks", "examples", "tests"):
            tree = ast.parse(text)
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level]
            assert not any(name.split(".")[0] == outside for name in names), f"{module} imports {outside}"


@pytest.mark.slow
def test_wheel_holds_the_library_only(tmp_path):
    # Built from a copy of the files git knows of: setuptools would otherwise reuse a stale build/ of the checkout.
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        if os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), source],
        check=True,
        capture_output=True,
    )
    (wheel,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"rose_hf", wheel.split("-")[0] + "-" + wheel.split("-")[1] + ".dist-info"}, sorted(top)
    sources = {name for name in names if name.endswith(".py")}
    assert sources == {os.path.relpath(p, ROOT) for p in _modules().values()}
