"""Flow memory against the number of items: ``asyncjobs run`` of a no-op io ``foreach``.

    python benchmarks/bench_flow_memory.py [--sizes 100000,1000000] [--endless-s 20]

Each size is a whole command (``asyncjobs run FLOW --quiet --report R.json``, the report
streamed as jobs end), its peak RSS read from ``getrusage(RUSAGE_CHILDREN)`` of a fresh
measuring interpreter. Target: the peak at 1,000,000 items within 1.3x of 100,000.

Then ``foreach: {range: 1000000000000}``: the command runs for ``--endless-s`` seconds,
its RSS sampled every second from ``/proc/PID/status``, then SIGINT; flat memory means
the last samples are no higher than the early ones (printed: MiB per sample, and the
growth from the 3rd second to the last).
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.3
FLOW = """jobs:
  noop:
    foreach: {{range: {n}}}
    call: bench_flow_memory:noop
    args: ["{{{{ item }}}}"]
"""


async def noop(i: int) -> int:
    return i


def command(folder: Path, n: int) -> list[str]:
    flow = folder / f"noop{n}.yaml"
    flow.write_text(FLOW.format(n=n))
    script = Path(sys.executable).parent / "asyncjobs"
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "asyncjobs"]
    return [*head, "run", str(flow), "--quiet", "--report", str(folder / f"r{n}.json")]


def measure(n: int) -> dict[str, float]:
    """One command in a fresh interpreter, so RUSAGE_CHILDREN is that command's alone."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "subprocess.run(json.loads(sys.argv[1]), check=True, cwd=sys.argv[2])\n"
        "wall = time.perf_counter() - t\n"
        "kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'wall_s': wall, 'peak_mib': kib / 1024}))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, json.dumps(command(Path(tmp), n)),
                              str(HERE)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def endless(seconds: int) -> list[float]:
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(command(Path(tmp), 10**12), cwd=HERE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(seconds):
                time.sleep(1)
                samples.append(rss_mib(proc.pid))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--endless-s", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    peaks = {}
    print(f"{'items':>9} {'wall s':>7} {'items/s':>9} {'peak MiB':>9}")
    for n in sizes:
        r = measure(n)
        peaks[n] = r["peak_mib"]
        print(f"{n:>9,} {r['wall_s']:>7.2f} {n / r['wall_s']:>9,.0f} {r['peak_mib']:>9.1f}",
              flush=True)
    ratio = peaks[sizes[-1]] / peaks[sizes[0]]
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(f"peak at {sizes[-1]:,} / peak at {sizes[0]:,} = {ratio:.2f}; "
          f"target <= {TARGET}: {verdict}")
    if args.endless_s:
        samples = endless(args.endless_s)
        print("range 10**12, RSS MiB each second: " + " ".join(f"{m:.0f}" for m in samples))
        if len(samples) > 3:
            print(f"growth from second 3 to {len(samples)}: {samples[-1] - samples[2]:+.1f} MiB")


if __name__ == "__main__":
    _ = resource  # the child code uses it; imported here so the module documents it
    main()
