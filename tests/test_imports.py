"""The import graph of the installed `convc` package, read from its source with `ast`: no cycles
(function-level imports included), and every edge pointing down the pipeline.

    base (spec, target, files, reference, check) -> ops -> schedules -> records, dispatch
    -> build (llvm, cuda) -> kernel -> api, plans, export, tuning, cli, bench, convc

Edges: `import a.b.c` and `from a.b import c` make the importer depend on the module named and on
each package above it that is not also above the importer (those are initialized before the
importer runs: a package's __init__ may import its own modules). The package root `convc` counts
only when named: `from convc import x` for a name that is not a module is an edge to the root,
which imports everything.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent

# The pipeline, bottom first: a module may import from its own layer and the layers below.
# The first matching prefix decides (so "convc.tuning" after "convc.records").
LAYERS = [
    ("base", ["convc.version", "convc.files", "convc.spec", "convc.pool_spec", "convc.transpose",
              "convc.target", "convc.reference", "convc.reference_pool", "convc.check",
              "convc.check_pool", "convc.tuning_logs"]),
    ("ops", ["convc.ops"]),
    ("schedules", ["convc.schedules"]),
    ("dispatch", ["convc.records", "convc.dispatch"]),
    ("build", ["convc.build", "convc.export_runtime"]),
    ("kernel", ["convc.kernel"]),
    ("entry", ["convc.plans", "convc.api", "convc.api_transpose", "convc.pool_api",
               "convc.batch_norm", "convc.export", "convc.tuning", "convc.cli", "convc.bench",
               "convc.__main__", "convc", "convc.torch"]),
]
# torch stays optional: a module-level `import torch` only in convc.torch; the package itself is
# imported (inside functions) only by these, which need it for what they do.
TORCH_PACKAGE = "convc.torch"
IMPORTS_CONVC_TORCH = {"convc.bench.overhead", "convc.bench.train"}


def package_sources(root: Path) -> dict:
    """{module name: source file} of the installed package, from pyproject's package-dir."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules = {}
    for package in config["packages"]:
        directory = root / _package_dir(package, config["package-dir"])
        for path in directory.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _package_dir(package: str, mapping: dict) -> Path:
    """The source folder of `package`: its longest prefix in package-dir, plus the rest."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return Path(mapping[prefix], *parts[cut:])
    return Path(*parts)


def imports_of(name: str, path: Path, modules) -> set:
    """The modules `name` depends on: every import statement in the file, at any depth."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                named.add(child if child in modules else base)
    deps = set()
    for target in named:
        if target not in modules and not target.startswith("convc."):
            continue  # another distribution
        deps.add(target)
        deps.update(p for p in _packages_above(target) if not _is_above(p, name))
    deps.discard(name)
    return {d for d in deps if d in modules}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module
    parts = package.split(".")
    base = parts[:len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _packages_above(module: str) -> list:
    """The packages a module's import initializes first, the root `convc` excepted."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _is_above(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def import_graph(root: Path) -> dict:
    modules = package_sources(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict) -> list | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of the pipeline: add it to LAYERS")


# --- the package -----------------------------------------------------------------------------

def test_the_graph_covers_the_installed_package():
    graph = import_graph(ROOT)
    for name in ("convc", "convc.api", "convc.build.cuda.nvcc", "convc.kernel.core",
                 "convc.schedules.cpu.direct", "convc.tuning.driver", "convc.bench.topi_peer",
                 "convc.tuning_logs"):
        assert name in graph, name
    assert "convc.build.llvm" in graph["convc.build"]
    assert "convc.schedules.cpu.direct" in graph["convc.schedules.cpu"]


def test_convc_imports_have_no_cycle():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_pipeline():
    graph = import_graph(ROOT)
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps)
              if layer_of(d) > layer_of(m)]
    assert not upward, "imports against the pipeline:\n" + "\n".join(upward)


def _module_level_imports(path: Path) -> set:
    """Top-level names imported by the module's own statements (not inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_torch_is_imported_at_module_level_only_by_convc_torch():
    modules = package_sources(ROOT)
    assert TORCH_PACKAGE in modules and f"{TORCH_PACKAGE}.ops" in modules
    offenders = [name for name, path in sorted(modules.items())
                 if "torch" in _module_level_imports(path)
                 and not (name == TORCH_PACKAGE or name.startswith(TORCH_PACKAGE + "."))]
    assert not offenders, f"import torch at module level outside {TORCH_PACKAGE}: {offenders}"


def test_only_the_torch_benchmarks_import_convc_torch():
    graph = import_graph(ROOT)
    importers = {name for name, deps in graph.items()
                 if any(d == TORCH_PACKAGE or d.startswith(TORCH_PACKAGE + ".") for d in deps)
                 and not (name == TORCH_PACKAGE or name.startswith(TORCH_PACKAGE + "."))}
    assert importers == IMPORTS_CONVC_TORCH


# --- the checker itself ----------------------------------------------------------------------

def _fake_package(tmp_path: Path, files: dict) -> Path:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [tool.setuptools]
        package-dir = { "convc" = "convc", "convc.schedules" = "schedules" }
        packages = ["convc", "convc.sub", "convc.schedules"]
    """))
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_a_function_level_import_that_hides_a_cycle_is_found(tmp_path):
    root = _fake_package(tmp_path, {
        "convc/__init__.py": "from .a import f\n",
        "convc/a.py": "from .b import g\n\ndef f():\n    return g()\n",
        "convc/b.py": "def g():\n    from .a import f  # lazy: hides the cycle\n    return f\n",
        "convc/sub/__init__.py": "",
        "schedules/__init__.py": "",
    })
    assert find_cycle(import_graph(root)) == ["convc.a", "convc.b", "convc.a"]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    """Importing convc.sub.low runs convc/sub/__init__.py first: if that imports a module which
    imports convc.sub.low, the order of imports decides whether it fails."""
    root = _fake_package(tmp_path, {
        "convc/__init__.py": "",
        "convc/top.py": "from .sub.low import x\n",
        "convc/sub/__init__.py": "from ..top import x\n",
        "convc/sub/low.py": "x = 1\n",
        "schedules/__init__.py": "import convc.sub.low\n",
    })
    graph = import_graph(root)
    assert graph["convc.schedules"] == {"convc.sub", "convc.sub.low"}
    assert find_cycle(graph) == ["convc.sub", "convc.top", "convc.sub"]


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path):
    root = _fake_package(tmp_path, {
        "convc/__init__.py": "from . import sub\n",
        "convc/sub/__init__.py": "from .low import x\nfrom .high import y\n",
        "convc/sub/low.py": "x = 1\n",
        "convc/sub/high.py": "from .low import x\ny = x\n",
        "schedules/__init__.py": "from convc import sub\n",
    })
    assert find_cycle(import_graph(root)) is None
