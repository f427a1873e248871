"""``asyncjobs status`` and ``asyncjobs run --connect`` (placeholder until the client lands)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def cmd_status(args: argparse.Namespace) -> int:
    print("asyncjobs: error: asyncjobs status is not built yet", file=sys.stderr)
    return 2
