"""The cold command: ``asyncjobs run examples/montecarlo.yaml --quiet``, as a user runs it,
against a plain ``multiprocessing.Pool`` script doing the same work, both timed from outside.

    python benchmarks/bench_flow_cold.py [--jobs 3000] [--tries 4000] [--repeat 3]

Each variant is a whole command (interpreter start, imports, workers, exit), started by
a fresh measuring interpreter, once per round, the variants alternating:

- ``asyncjobs-run``: ``asyncjobs run examples/montecarlo.yaml --quiet`` (the console
  script beside this interpreter, else ``python -m asyncjobs``), from the repository root;
  ``--param jobs=N --param tries=M`` (here and in the dry run) only when the sizes differ
  from the file's;
- ``pool-script``: ``python benchmarks/montecarlo_pool.py``: ``Pool(os.cpu_count()).map(
  hits, [tries] * jobs)``, then ``estimate_pi``, printed (the platform's start method);
- ``pool-floor``: the same script with ``--floor examples/montecarlo.yaml``: first only
  what any run of a YAML flow on asyncio must do before its first job (import PyYAML,
  asyncio and uvloop; parse the file). Its ratio to ``pool-script`` is the floor of the
  target's ratio on this machine;
- where the asyncjobs command's time goes: ``asyncjobs-dry-run`` (``asyncjobs run
  --dry-run``: imports, load, validate and plan, print the plan; run nothing),
  ``import-cli`` (``python -c "import asyncjobs.cli"``) and ``python-start``
  (``python -c pass``).

Wall time is taken around ``subprocess.run``; CPU time and peak RSS come from
``getrusage(RUSAGE_CHILDREN)`` of the measuring interpreter, whose one child is the
command: CPU is summed over every process of the command that was waited for (workers
included), peak RSS is that of its **largest single** process. After the rounds, a
start-up breakdown: the top imports of ``import asyncjobs.cli`` and of the dry run,
from ``python -X importtime``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import _harness

import asyncjobs

TARGET_RATIO = 1.05
FLOW = "examples/montecarlo.yaml"
#: the sizes written in FLOW's params
FLOW_JOBS, FLOW_TRIES = 3000, 4000
POOL_SCRIPT = str(Path(__file__).resolve().parent / "montecarlo_pool.py")
VARIANTS = ["asyncjobs-run", "pool-script", "pool-floor", "asyncjobs-dry-run", "import-cli",
            "python-start"]
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def asyncjobs_command() -> list[str]:
    """``asyncjobs`` as a user types it: the console script of this interpreter's
    environment, or ``python -m asyncjobs`` where there is none."""
    script = Path(sys.executable).parent / "asyncjobs"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "asyncjobs"]


def command_argv(variant: str, jobs: int, tries: int) -> list[str]:
    params = []
    if (jobs, tries) != (FLOW_JOBS, FLOW_TRIES):
        params = ["--param", f"jobs={jobs}", "--param", f"tries={tries}"]
    if variant == "asyncjobs-run":
        return [*asyncjobs_command(), "run", FLOW, "--quiet", *params]
    if variant == "pool-script":
        return [sys.executable, POOL_SCRIPT, "--jobs", str(jobs), "--tries", str(tries)]
    if variant == "pool-floor":
        return [sys.executable, POOL_SCRIPT, "--jobs", str(jobs), "--tries", str(tries),
                "--floor", FLOW]
    if variant == "asyncjobs-dry-run":
        return [*asyncjobs_command(), "run", "--dry-run", FLOW, *params]
    if variant == "import-cli":
        return [sys.executable, "-c", "import asyncjobs.cli"]
    return [sys.executable, "-c", "pass"]


def check_output(variant: str, proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} exited {proc.returncode}:\n{proc.stderr}")
    if variant in ("pool-script", "pool-floor"):
        pi = float(proc.stdout.split("~")[1])
        assert 3.0 < pi < 3.3, proc.stdout
    elif variant == "asyncjobs-dry-run":
        assert "simulate" in proc.stdout, proc.stdout


def child(variant: str, jobs: int, tries: int) -> None:
    argv = command_argv(variant, jobs, tries)
    clock = _harness.Clock()
    proc = subprocess.run(argv, cwd=_harness.ROOT, capture_output=True, text=True, check=False)
    timing = clock.stop()
    check_output(variant, proc)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    _harness.emit({**timing, "cpu_children_s": usage.ru_utime + usage.ru_stime})


# -- the start-up breakdown ------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The environment ``_harness.run_child`` gives its children."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_harness.ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


def import_times(argv: list[str]) -> list[tuple[int, int, int, str]]:
    """``(self µs, cumulative µs, depth, module)`` per import of ``python -X importtime``."""
    if argv[0] == sys.executable:
        argv = [sys.executable, "-X", "importtime", *argv[1:]]
    else:  # the console script: run its interpreter with the flag
        argv = [sys.executable, "-X", "importtime", *argv]
    proc = subprocess.run(argv, cwd=_harness.ROOT, capture_output=True, text=True,
                          env=child_env(), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}:\n{proc.stderr}")
    rows = []
    for line in proc.stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    return rows


def print_imports(title: str, rows: list[tuple[int, int, int, str]], top: int) -> None:
    total_ms = sum(cum for _, cum, depth, _ in rows if depth == 0) / 1000
    print(f"\n{title}: {len(rows)} modules, {total_ms:.1f} ms in top-level imports "
          f"(one run, under -X importtime, which inflates them); top {top} by cumulative:")
    print(f"  {'cumul ms':>8}{'self ms':>8}  module (indented by depth)")
    for self_us, cum_us, depth, name in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"  {cum_us / 1000:>8.1f}{self_us / 1000:>8.1f}  {'  ' * depth}{name}")


def print_breakdown(runs: dict[str, list[dict[str, float]]]) -> None:
    def ms(variant: str) -> float:
        return 1000 * _harness.median(runs[variant], "wall_s")

    start, cli, dry, run = (ms(v) for v in ("python-start", "import-cli", "asyncjobs-dry-run",
                                             "asyncjobs-run"))
    print("\nwhere the asyncjobs command's time goes (differences of the medians above):")
    print(f"  {start:>7.0f} ms  interpreter start and exit (python -c pass)")
    print(f"  {cli - start:>7.0f} ms  import asyncjobs.cli")
    print(f"  {dry - cli:>7.0f} ms  the dry run's own imports, load, validate, plan, print")
    print(f"  {run - dry:>7.0f} ms  the rest: running the flow (workers, jobs, state, exit)")
    print_imports('python -X importtime -c "import asyncjobs.cli"',
                  import_times(command_argv("import-cli", FLOW_JOBS, FLOW_TRIES)), 10)
    print_imports(f"python -X importtime: asyncjobs run --dry-run {FLOW}",
                  import_times(command_argv("asyncjobs-dry-run", FLOW_JOBS, FLOW_TRIES)), 10)


# -- the parent ------------------------------------------------------------------------

def parent(args: argparse.Namespace) -> None:
    opts = ["--jobs", str(args.jobs), "--tries", str(args.tries)]
    print(f"cold commands: Monte Carlo pi, {args.jobs} jobs x {args.tries} tries; "
          f"{os.cpu_count()} cores; median of {args.repeat} rounds; Python "
          f"{sys.version.split()[0]}; Pool start method {multiprocessing.get_start_method()}; "
          f"asyncjobs from {asyncjobs.__file__}; command: "
          f"{' '.join(command_argv('asyncjobs-run', args.jobs, args.tries))}", flush=True)
    runs = _harness.run_rounds(__file__, VARIANTS, opts, args.repeat)
    print(f"\n{'variant':<19}{'median s':>9}{'min s':>7}{'max s':>7}{'CPU s':>7}{'peak MiB':>9}")
    for v in VARIANTS:
        r = runs[v]
        print(f"{v:<19}{_harness.median(r, 'wall_s'):>9.3f}{_harness.fastest(r):>7.3f}"
              f"{max(x['wall_s'] for x in r):>7.3f}{_harness.median(r, 'cpu_children_s'):>7.2f}"
              f"{_harness.peak(r, 'rss_children_mib'):>9.1f}")
    # paired_ratio gives first / second, round by round: here asyncjobs' time over Pool's
    ratio, low, high = _harness.paired_ratio(runs["asyncjobs-run"], runs["pool-script"])
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"\nasyncjobs run / Pool script wall time = {ratio:.3f} (median of the rounds' "
          f"ratios; {low:.3f}-{high:.3f}); target <= {TARGET_RATIO}: {verdict}")
    ratio, low, high = _harness.paired_ratio(runs["pool-floor"], runs["pool-script"])
    print(f"floor: the Pool script after importing PyYAML, asyncio and uvloop and parsing "
          f"the file / Pool script = {ratio:.3f} ({low:.3f}-{high:.3f})")
    print_breakdown(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=FLOW_JOBS)
    parser.add_argument("--tries", type=int, default=FLOW_TRIES)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args.variant, args.jobs, args.tries)
    else:
        parent(args)


if __name__ == "__main__":
    main()
