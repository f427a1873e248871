"""The progress line, live or plain, from a real flow run's counters."""

from __future__ import annotations

import asyncio
import io
import re
import textwrap
from typing import TYPE_CHECKING

import pytest

from asyncjobs import Runner, progress

if TYPE_CHECKING:
    from pathlib import Path


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("live", [False, True])
async def test_progress_reports_counts_while_a_flow_runs(
    tmp_path: Path, live: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.05)
    monkeypatch.setattr(progress, "LIVE_EVERY_S", 0.05)
    path = tmp_path / "jobs.yaml"
    path.write_text(textwrap.dedent("""
        jobs:
          wait: {foreach: {range: 4}, shell: "sleep 0.3"}
    """))
    stream = FakeTty() if live else io.StringIO()
    async with Runner() as runner:
        run = runner.open_flow(path, env={})
        shown = progress.Progress(run, stream=stream)
        assert shown.live is live
        shown.start()
        task = asyncio.ensure_future(run.run())
        await asyncio.sleep(0.15)
        line = progress.status_line(run, 0.15)
        report = await task
        await shown.stop()
    assert report.ok
    assert line.startswith("done 0/4 · failed 0 · running 4")
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stream.getvalue())  # terminal escapes
    assert "done " in out and "/4 · failed 0" in out


def test_status_line_rate_and_eta() -> None:
    class Counts:
        done, total, failed, running = 50, 150, 2, 10

    line = progress.status_line(Counts(), 10.0)  # type: ignore[arg-type]
    assert line == "done 50/150 · failed 2 · running 10 · 5.0/s · ETA 20s"
