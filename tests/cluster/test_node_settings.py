"""The node supervisor's arithmetic and settings, without processes."""

from __future__ import annotations

import argparse

import pytest

from asyncjobs.daemons.loop import LoopSettings
from asyncjobs.daemons.node import cpu_share, settings_from_args
from asyncjobs.daemons.systemd import Notifier
from asyncjobs.errors import ClusterConfigError


def args(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "connect": "127.0.0.1:7700", "loops": None, "cpu_workers": None,
        "io_concurrency": None, "name": None, "drain_timeout": 30.0, "secret_file": None,
        "tls_cert": None, "tls_key": None, "tls_ca": None}
    return argparse.Namespace(**{**base, **given})


@pytest.mark.parametrize(("total", "loops", "shares"), [
    (4, 2, [2, 2]), (3, 2, [2, 1]), (1, 3, [1, 0, 0]), (0, 2, [0, 0]), (5, 1, [5])])
def test_cpu_workers_are_split_across_the_loops(total: int, loops: int,
                                                shares: list[int]) -> None:
    assert [cpu_share(total, loops, i) for i in range(loops)] == shares
    made = settings_from_args(args(loops=loops, cpu_workers=total, name="n"), b"k")
    assert [s.cpu_workers for s in made] == shares
    assert [s.index for s in made] == list(range(loops))
    assert all(s.loops == loops and s.name == "n" for s in made)


def test_the_settings_travel_as_json_and_never_show_the_secret() -> None:
    (one,) = settings_from_args(args(loops=1, cpu_workers=1, io_concurrency=7), b"s3cret")
    assert LoopSettings.from_json(one.to_json()) == one
    assert one.to_json()["secret"] == b"s3cret".hex()
    assert "s3cret" not in repr(one) and b"s3cret".hex() not in repr(one)
    assert one.io_concurrency == 7


@pytest.mark.parametrize(("given", "says"), [
    ({"loops": 0}, "--loops"), ({"cpu_workers": -1}, "--cpu-workers"),
    ({"io_concurrency": 0}, "--io-concurrency"), ({"drain_timeout": float("nan")}, "drain"),
    ({"connect": "nowhere"}, "HOST:PORT"), ({"connect": "127.0.0.1:0"}, "port"),
    ({"name": " "}, "--name"), ({"tls_cert": "c"}, "TLS")])
def test_bad_settings_say_which_flag(given: dict[str, object], says: str) -> None:
    with pytest.raises(ClusterConfigError, match=says):
        settings_from_args(args(**given), b"")


def test_systemd_watchdog_is_ours_only_when_its_pid_is_ours() -> None:
    import os

    assert Notifier.from_env({"WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0
    assert Notifier.from_env({"WATCHDOG_USEC": "4000000",
                              "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 4.0
    assert Notifier.from_env({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
                             ).watchdog_s is None
    Notifier.from_env({}).notify("READY=1")  # outside systemd: nothing happens
