"""``asyncjobs node`` (placeholder until the node lands)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def main(args: argparse.Namespace) -> int:
    print("asyncjobs: error: asyncjobs node is not built yet", file=sys.stderr)
    return 2
