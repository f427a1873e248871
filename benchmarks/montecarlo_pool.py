"""Monte Carlo pi with a plain multiprocessing.Pool: what examples/montecarlo.yaml does,
written by hand. bench_flow_cold.py runs it as a whole command, against `asyncjobs run`.

    python benchmarks/montecarlo_pool.py [--jobs 3000] [--tries 4000] [--floor FLOW]

``--floor FLOW``: first do what any run of a YAML flow on an event loop must do before
its first job, and nothing else: import PyYAML, asyncio and uvloop, and parse FLOW.
``bench_flow_cold.py`` times that as the floor of the cold command.

The repository root is put on ``sys.path``, for ``examples``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # for `examples`
    sys.path.insert(0, _ROOT)

from examples.montecarlo import estimate_pi, hits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--tries", type=int, default=4000)
    parser.add_argument("--floor", metavar="FLOW")
    args = parser.parse_args()
    if args.floor:
        import asyncio  # noqa: F401

        import uvloop  # noqa: F401
        import yaml

        with open(args.floor, encoding="utf-8") as f:
            yaml.safe_load(f)
    with multiprocessing.Pool(os.cpu_count()) as pool:
        counts = pool.map(hits, [args.tries] * args.jobs)
    print(f"pi ~ {estimate_pi(counts, args.tries):.5f}")


if __name__ == "__main__":  # with spawn, workers import this module: run nothing there
    main()
