"""What the benchmarks share: one fresh subprocess per measured variant, so each
variant's peak RSS is its own, and a median over rounds run alternately, so slow drift
of the machine (thermal, other load) spreads evenly over the variants."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 600


class Clock:
    """Wall time (``perf_counter``) and this process's CPU time over one measured span."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> dict[str, float]:
        return {"wall_s": time.perf_counter() - self._wall,
                "cpu_parent_s": time.process_time() - self._cpu}


def peak_rss_mib() -> dict[str, float]:
    """Peak RSS of this process and of its largest waited-for child, in MiB.

    Linux reports ``ru_maxrss`` in KiB; for ``RUSAGE_CHILDREN`` it is the largest single
    child (workers that were waited for), not a sum.
    """
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"rss_parent_mib": self_kib / 1024, "rss_children_mib": children_kib / 1024}


def emit(result: dict[str, object]) -> None:
    """Print a child's result as its last stdout line, with its peak RSS added."""
    print(json.dumps({**result, **peak_rss_mib()}), flush=True)


def run_child(script: str, variant: str, args: list[str]) -> dict[str, float]:
    """Run ``script --variant VARIANT ARGS`` in a fresh interpreter; return what it emitted."""
    env = dict(os.environ)
    # as on a user's machine, where installed modules have their bytecode cached (some
    # sandboxes set this, and every child would then compile all it imports)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # the repository root, for `examples`, and whatever PYTHONPATH picks the asyncjobs tree
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, script, "--variant", variant, *args],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_rounds(
    script: str, variants: list[str], args: list[str], repeat: int
) -> dict[str, list[dict[str, float]]]:
    """Run every variant once per round, alternating, for ``repeat`` rounds."""
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for n in range(repeat):
        for variant in variants:
            runs[variant].append(run_child(script, variant, args))
            print(f"  round {n + 1}/{repeat} {variant:<22} "
                  f"{runs[variant][-1]['wall_s']:.3f} s", file=sys.stderr, flush=True)
    return runs


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def peak(runs: list[dict[str, float]], key: str) -> float:
    return max(r[key] for r in runs)


def fastest(runs: list[dict[str, float]]) -> float:
    return min(r["wall_s"] for r in runs)


def paired_ratio(
    base: list[dict[str, float]], ours: list[dict[str, float]]
) -> tuple[float, float, float]:
    """``base / ours`` wall time, round by round (the two ran minutes apart at most, on
    the same server), as (median, lowest, highest): steadier than a ratio of medians
    when the machine's speed drifts between rounds."""
    ratios = sorted(b["wall_s"] / o["wall_s"] for b, o in zip(base, ours, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


@contextlib.contextmanager
def served(argv: list[str]) -> Iterator[int]:
    """A local server process for the body of the ``with``: it prints its port on its
    first line and runs until its stdin closes; yields the port, then stops it."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as server:
        try:
            assert server.stdout is not None
            yield int(server.stdout.readline())
        finally:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
