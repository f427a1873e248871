from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import psutil
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A coordinator started without ``--state`` keeps its state under the user's state
    directory: point that at a folder of the run's own, for this process and the
    daemons it starts."""
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    os.environ.pop("STATE_DIRECTORY", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _debug_asyncio_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": _debug_asyncio_loop
    }
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        pass
    else:
        factories["uvloop"] = uvloop.new_event_loop
        if "cluster" in item.path.parts:  # real daemons: once, on the loop they use
            return {"uvloop": uvloop.new_event_loop}
    return factories


@pytest.fixture
def no_leftover_children() -> Iterator[None]:
    """Fail the test if it leaves any child process of ours alive."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = 50
    leftover: list[Any] = []
    for _ in range(deadline):
        leftover = [p for p in me.children(recursive=True) if p.pid not in before]
        leftover = [p for p in leftover if p.is_running() and p.status() != "zombie"]
        if not leftover:
            return
        psutil.wait_procs(leftover, timeout=0.1)
    pytest.fail(f"child processes left behind: {[p.pid for p in leftover]}")


def write_flow(tmp_path: Path, text: str) -> Path:
    """Write ``text`` (dedented) as ``jobs.yaml`` in ``tmp_path``."""
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def python_env() -> dict[str, str]:
    """Environment for a child Python that must import this checkout and its tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(REPO, "src"), REPO, env.get("PYTHONPATH", "")]
    )
    return env


PYTHON = sys.executable


def cpu_pids(runner: Any) -> list[int]:
    """PIDs of the cpu worker processes of an open embedded ``Runner``."""
    from asyncjobs.executors.cpu import CpuPool
    from asyncjobs.model import JobKind

    pool = runner.engine.executors[JobKind.CPU]
    assert isinstance(pool, CpuPool)
    return pool.pids()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(cert, key, ca)``: a CA and a certificate it signed for 127.0.0.1, made once."""
    import shutil

    from .certs import write_certificates

    if shutil.which("openssl") is None:
        pytest.skip("TLS tests need the openssl command to generate certificates")
    return write_certificates(tmp_path_factory.mktemp("tls"))
