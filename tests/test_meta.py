"""The package's shape: public names, imports that stand alone, layers that point down."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

import asyncjobs

from .conftest import PYTHON, python_env

SRC = Path(asyncjobs.__file__).parent
MODULES = sorted(
    "asyncjobs." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in SRC.rglob("*.py")
    if p.name not in ("__main__.py", "_worker_main.py")
)
PURE = ("core", "flow", "protocol")
IO_MODULES = {"asyncio", "anyio", "aiohttp", "uvloop", "sqlite3", "socket", "time", "selectors"}
#: higher layers; a lower layer importing one of these points up
UPPER = {"api", "engine", "cli", "daemons", "executors", "transport", "store", "report"}


def test_all_is_a_tuple_of_exactly_the_public_names() -> None:
    assert isinstance(asyncjobs.__all__, tuple)
    for name in asyncjobs.__all__:  # lazy ones load here
        assert getattr(asyncjobs, name) is not None
    public = {n for n in vars(asyncjobs) if not n.startswith("_")}
    public -= {"annotations", "importlib", "TYPE_CHECKING", "Any"}
    modules = {n for n in public if type(getattr(asyncjobs, n)).__name__ == "module"}
    assert set(asyncjobs.__all__) == public - modules
    assert set(asyncjobs.__all__) <= set(dir(asyncjobs))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        asyncjobs.Nope  # type: ignore[attr-defined]  # noqa: B018
    for name in ("Runner", "Job", "job", "JobFailed", "JobTimeout", "JobCancelled", "FlowError"):
        assert name in asyncjobs.__all__
    assert issubclass(asyncjobs.JobTimeout, asyncjobs.JobFailed)
    assert issubclass(asyncjobs.JobTimeout, TimeoutError)


def test_every_module_imports_alone_without_warnings() -> None:
    code = (
        "import importlib, subprocess, sys\n"
        "bad = []\n"
        "for m in sys.argv[1:]:\n"
        "    r = subprocess.run([sys.executable, '-W', 'error', '-c', f'import {m}'],"
        " capture_output=True, text=True)\n"
        "    if r.returncode: bad.append((m, r.stderr[-500:]))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([PYTHON, "-c", code, *MODULES], capture_output=True, text=True,
                       env=python_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    """Top-level names of what a module imports, relative ones resolved inside asyncjobs."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(SRC).with_suffix("").parts
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[: len(parts) - node.level])
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    names.add("asyncjobs." + target[0])
                else:
                    names.update("asyncjobs." + a.name for a in node.names)
            elif node.module:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_layers_do_no_io_and_import_nothing_above_them(package: str) -> None:
    for path in (SRC / package).rglob("*.py") if (SRC / package).exists() else []:
        found = _imports(path)
        assert not found & IO_MODULES, f"{path.name} imports IO: {found & IO_MODULES}"
        upward = {n for n in found if n.startswith("asyncjobs.") and n[10:] in UPPER}
        assert not upward, f"{path.name} imports a higher layer: {upward}"


#: which layer each top-level module or package of asyncjobs belongs to, lowest first
LAYERS: dict[str, tuple[str, ...]] = {
    "leaf": ("errors", "model", "config", "marks", "targets", "auth", "pidlock"),
    "pure": ("core", "flow", "protocol"),
    "adapter": ("executors", "store", "report", "transport", "eventloop"),
    "seam": ("backend",),
    "engine": ("engine",),
    "runs": ("mapper", "flowrun", "clusterbackend"),
    "api": ("api", "client", "localcluster", "daemons"),
    "top": ("cli", "client_cli", "progress", "__main__", "__init__"),
}
#: what each layer may import besides itself; "runs" use the Backend seam, never the engine
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "leaf": (),
    "pure": ("leaf",),
    "adapter": ("leaf", "pure"),
    "seam": ("leaf", "pure", "adapter"),
    "engine": ("leaf", "pure", "adapter", "seam"),
    "runs": ("leaf", "pure", "adapter", "seam"),
    "api": ("leaf", "pure", "adapter", "seam", "engine", "runs"),
    "top": ("leaf", "pure", "adapter", "seam", "engine", "runs", "api"),
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__") or "__init__"


def _runtime_imports(path: Path) -> set[str]:
    """Modules of asyncjobs this file imports when it runs (``TYPE_CHECKING`` blocks
    left out, imports inside functions kept), as dotted names below the package."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(SRC).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncjobs."):
            found.add(node.module.removeprefix("asyncjobs.") if node.module else "")
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("asyncjobs.") for a in node.names
                         if a.name.startswith("asyncjobs."))
    return {f for f in found if f}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py") if p.name != "_worker_main.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imp in _runtime_imports(path):
            while imp and imp not in modules:  # "core.policy.scoped" -> "core.policy"
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def test_every_module_has_a_layer() -> None:
    missing = {m.split(".")[0] for m in _graph()} - set(LAYER_OF)
    assert not missing, f"add these to LAYERS: {sorted(missing)}"


def test_imports_point_down_the_layers() -> None:
    bad = []
    for module, targets in _graph().items():
        layer = LAYER_OF[module.split(".")[0]]
        allowed = {layer, *MAY_IMPORT[layer]}
        for target in targets:
            if LAYER_OF[target.split(".")[0]] not in allowed:
                bad.append(f"{module} ({layer}) imports {target} "
                           f"({LAYER_OF[target.split('.')[0]]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    for root in graph:
        if root in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph[nxt])))


def test_executors_do_not_reach_up_to_engine_or_api() -> None:
    for path in (SRC / "executors").rglob("*.py"):
        found = _imports(path)
        assert not found & {"asyncjobs.engine", "asyncjobs.api", "asyncjobs.cli"}, path.name


def test_import_is_light() -> None:
    # workers import the app's main module, and so this package, at every start
    heavy = ("aiohttp", "yaml", "rich", "asyncio", "asyncjobs.engine", "asyncjobs.protocol",
             "multiprocessing")
    code = f"import sys, asyncjobs; print(sorted(m for m in {heavy} if m in sys.modules))"
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=python_env())
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_a_flow_without_http_jobs_does_not_import_aiohttp(tmp_path: Path) -> None:
    # its import (~100 ms, TLS contexts included) would double a small flow's start-up
    (tmp_path / "jobs.yaml").write_text("jobs:\n  a: {shell: 'true'}\n")
    code = ("import sys; from asyncjobs.cli import main; code = main(['run', 'jobs.yaml', "
            "'--quiet']); print(code, 'aiohttp' in sys.modules)")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                       env=python_env(), cwd=tmp_path)
    assert r.stdout.strip() == "0 False", r.stdout + r.stderr


def test_an_embedded_run_imports_only_what_it_uses(tmp_path: Path) -> None:
    # `asyncjobs run` embedded is timed against a bare multiprocessing.Pool script
    # (bench_flow_cold.py): the cluster half, HTTP, rich and error-only helpers stay out
    (tmp_path / "jobs.yaml").write_text(
        "jobs:\n  a: {shell: 'true'}\n"
        "  b: {foreach: {range: 4}, call: 'math:sqrt', args: ['{{ item }}'], needs: [a]}\n")
    unwanted = ("asyncjobs.protocol", "asyncjobs.client", "asyncjobs.transport",
                "asyncjobs.clusterbackend", "asyncjobs.localcluster", "asyncjobs.daemons",
                "aiohttp", "rich", "prometheus_client", "difflib", "shutil")
    code = ("import sys; from asyncjobs.cli import main; code = main(['run', 'jobs.yaml', "
            f"'--quiet']); print(code, sorted(m for m in {unwanted} if m in sys.modules))")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True,
                       env=python_env(), cwd=tmp_path)
    assert r.stdout.strip() == "0 []", r.stdout + r.stderr


def test_version_command() -> None:
    r = subprocess.run([PYTHON, "-m", "asyncjobs", "--version"], capture_output=True,
                       text=True, env=python_env())
    assert r.returncode == 0 and r.stdout.strip() == f"asyncjobs {asyncjobs.__version__}"
