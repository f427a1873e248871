"""``asyncjobs coordinator --http HOST:PORT``: ``/healthz``, Prometheus ``/metrics``,
``/api/nodes`` and ``/api/flows`` (JSON, the fields of ``asyncjobs status --json``) and
``/state`` (JSON, everything), read from the coordinator's state when asked, never stored
twice.

The two histograms are the exception: a duration is known once, as its job passes, so the
coordination calls a hook per job (``Coordination.on_dispatched``/``on_finished``) that
adds one to a fixed bucket here. Memory stays the same however rarely anyone scrapes, and
without ``--http`` the hooks are unset and cost nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.core import Metric

    from .coordinator import CoordinatorServer

_COUNTERS = {
    "submitted": ("asyncjobs_jobs_submitted", "jobs clients submitted"),
    "refused": ("asyncjobs_jobs_refused", "jobs refused at submission (an id in use, an "
                                          "undeclared limit)"),
    "attempts_sent": ("asyncjobs_attempts_assigned", "attempts sent to nodes"),
    "attempts_lost": ("asyncjobs_attempts_lost", "attempts lost with a node or loop "
                                                 "that died"),
}

#: upper bounds (seconds) of the histograms' buckets; +Inf follows
DISPATCH_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                      1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
DURATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Buckets:
    """A histogram's counts in fixed buckets: ``observe`` is a bisect and two additions
    (it runs once per job on the coordinator's hot path).

    :param bounds: the buckets' upper bounds, ascending; values above the last go to +Inf
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        """The counts as Prometheus wants them: cumulative, ``le`` inclusive."""
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)


class _Collector:
    """Turns ``Coordination.to_dict()`` into metric families at each scrape."""

    def __init__(self, server: CoordinatorServer) -> None:
        self.server = server
        self.dispatch = Buckets(DISPATCH_BUCKETS_S)
        self.duration = Buckets(DURATION_BUCKETS_S)

    def attach(self) -> None:
        """Start observing jobs (the coordination must exist: the server is serving)."""
        state = self.server.state
        assert state is not None
        state.on_dispatched = self.dispatch.observe
        state.on_finished = self.duration.observe

    def collect(self) -> Iterator[Metric]:
        state = self.server.state
        if state is None:
            return
        data = state.to_dict()
        counts = data["counts"]
        for key, (name, doc) in _COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=counts[key])
        finished = CounterMetricFamily("asyncjobs_jobs_finished", "jobs that ended, by "
                                       "status", labels=["status"])
        for key, value in counts.items():
            if key.startswith("finished_"):
                finished.add_metric([key.removeprefix("finished_")], value)
        yield finished
        yield CounterMetricFamily("asyncjobs_results_stale", "results of attempts that "
                                  "no longer counted, ignored", value=data["stale_results"])
        yield CounterMetricFamily("asyncjobs_handshakes_refused", "connections dropped "
                                  "during their handshake", value=self.server.refused)
        yield CounterMetricFamily("asyncjobs_auth_failures", "handshakes refused because "
                                  "the peer did not prove the cluster secret",
                                  value=self.server.auth_failures)
        cluster_nodes = state.cluster.to_dict()["nodes"]
        on_nodes = sum(n["assigned"] for n in cluster_nodes if n["alive"])
        for name, doc, value in (
            ("asyncjobs_jobs_active", "jobs submitted and not finished", data["jobs_active"]),
            ("asyncjobs_jobs_queued", "jobs submitted and not on a node: held by a limit, "
             "waiting out a retry's backoff, or waiting for a free slot",
             max(0, data["jobs_active"] - on_nodes)),
            ("asyncjobs_attempts_waiting", "attempts waiting for a free slot",
             data["attempts_waiting"]),
            ("asyncjobs_clients", "clients connected", data["clients"]),
            ("asyncjobs_loops", "node loops connected", data["loops"]),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        nodes = data["nodes"]
        yield GaugeMetricFamily("asyncjobs_nodes_alive", "nodes alive",
                                value=sum(1 for n in nodes if n["alive"]))
        used = GaugeMetricFamily("asyncjobs_node_slots_used", "slots in use per node",
                                 labels=["node"])
        total = GaugeMetricFamily("asyncjobs_node_slots", "slots per node", labels=["node"])
        for n in nodes:
            if n["alive"]:
                used.add_metric([n["name"]], n["slots_used"])
                total.add_metric([n["name"]], n["slots_total"])
        yield used
        yield total
        yield self.dispatch.family(
            "asyncjobs_dispatch_latency_seconds", "seconds from a job's submission to its "
            "first attempt being sent to a node")
        yield self.duration.family(
            "asyncjobs_job_duration_seconds", "seconds from a finished job's last attempt "
            "being sent to a node to its end (the start and end its outcome reports)")


def make_app(server: CoordinatorServer) -> web.Application:
    """The routes; starts the histograms' observation when the server is serving."""
    collector = _Collector(server)
    if server.state is not None:
        collector.attach()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def healthz(request: web.Request) -> web.Response:
        ok = server.state is not None
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            content_type="text/plain", charset="utf-8")

    async def state(request: web.Request) -> web.Response:
        data: dict[str, Any] = server.state.to_dict() if server.state is not None else {}
        return web.json_response(data)

    def status() -> dict[str, Any]:
        if server.state is None:
            return {"nodes": [], "flows": []}
        return server.state.status().to_json()

    async def nodes(request: web.Request) -> web.Response:
        return web.json_response(status()["nodes"])

    async def flows(request: web.Request) -> web.Response:
        return web.json_response(status()["flows"])

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/nodes", nodes)
    app.router.add_get("/api/flows", flows)
    app.router.add_get("/state", state)
    return app


async def start_http(server: CoordinatorServer, host: str, port: int) -> web.AppRunner:
    """Serve the app; ``runner.addresses`` says where. Stop with ``runner.cleanup()``."""
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
