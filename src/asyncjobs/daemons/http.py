"""``asyncjobs coordinator --http HOST:PORT``: ``/healthz``, Prometheus ``/metrics`` and
``/state`` (JSON), read from the coordinator's state when asked, never stored twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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


class _Collector:
    """Turns ``Coordination.to_dict()`` into metric families at each scrape."""

    def __init__(self, server: CoordinatorServer) -> None:
        self.server = server

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
        for name, doc, value in (
            ("asyncjobs_jobs_active", "jobs submitted and not finished", data["jobs_active"]),
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


def make_app(server: CoordinatorServer) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(server))

    async def healthz(request: web.Request) -> web.Response:
        ok = server.state is not None
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            content_type="text/plain", charset="utf-8")

    async def state(request: web.Request) -> web.Response:
        data: dict[str, Any] = server.state.to_dict() if server.state is not None else {}
        return web.json_response(data)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/state", state)
    return app


async def start_http(server: CoordinatorServer, host: str, port: int) -> web.AppRunner:
    """Serve the app; ``runner.addresses`` says where. Stop with ``runner.cleanup()``."""
    runner = web.AppRunner(make_app(server), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
