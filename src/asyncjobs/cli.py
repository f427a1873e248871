"""The ``asyncjobs`` command: argv in, exit code out."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncjobs",
        description="An asyncio job runner: IO jobs as coroutines, CPU jobs on every core.",
    )
    parser.add_argument("--version", action="version", version=f"asyncjobs {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
