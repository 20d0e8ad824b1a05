"""Prometheus metrics for the server (``--metrics HOST:PORT``), with ``prometheus_client``.

Counters and gauges are read from the core's own counters when Prometheus scrapes (a custom collector):
the serving loop does no work for them. Two histograms are observed once per batch by the loop: how long
the batch took to reach the store, and how many publications it released. Nothing here runs unless the
flag is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# the core's counters, as exported: name -> help
COUNTERS = {
    "received": "messages received from clients (also the ones dropped unread)",
    "published": "publications sent on the PUB socket",
    "messages": "room messages accepted and sequenced",
    "rejected": "messages that could not be decoded (malformed, wrong version)",
    "refused": "requests and messages refused with an error",
    "throttled": "messages refused as over the sender's rate",
    "duplicates": "messages dropped as duplicates (acknowledged again)",
    "recovered": "messages sent again to fill clients' gaps",
    "recoveries": "history requests served",
    "timeouts": "sessions ended by silence",
    "auth_failures": "failed CURVE handshakes",
    "busy": "requests put off by the server-wide work budget",
    "shed": "messages dropped unread as over their source's intake budget",
    "searches": "searches answered",
    "errors": "internal errors (each logged)",
}
GAUGES = {"clients": "sessions connected", "rooms": "rooms with members", "history": "messages held in memory"}
PAIR_GAUGES = {  # only a server of a hot-standby pair has these (docs/cluster.md)
    "pair_active": "1 while this server is the pair's active, else 0",
    "pair_term": "the pair's term this server knows (grows at each takeover)",
    "pair_position": "replication position of the newest batch in this server's store",
    "pair_in_sync": "1 while the other server is in sync (active: its standby acknowledges; standby: it follows)",
}
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class _CoreCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, int]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator:
        for _ in range(3):  # read on the scraping thread while the loop runs: a dict may change under it
            try:
                stats = self.snapshot()
                break
            except RuntimeError:
                continue
        else:
            return
        for name, text in COUNTERS.items():
            family = CounterMetricFamily(f"zmqchat_{name}", text)
            family.add_metric([], stats.get(name, 0))
            yield family
        for name, text in GAUGES.items():
            family = GaugeMetricFamily(f"zmqchat_{name}", text)
            family.add_metric([], stats.get(name, 0))
            yield family
        for name, text in PAIR_GAUGES.items():
            if name in stats:
                family = GaugeMetricFamily(f"zmqchat_{name}", text)
                family.add_metric([], stats[name])
                yield family


class Metrics:
    """Serves the metrics of ``snapshot()`` (the core's counters) on ``host:port``."""

    def __init__(self, snapshot: Callable[[], dict[str, int]], host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_CoreCollector(snapshot))
        self.commit = Histogram("zmqchat_commit_seconds", "time for one batch to reach the store (submit)",
                                buckets=COMMIT_BUCKETS, registry=self.registry)
        self.batch = Histogram("zmqchat_publish_batch", "publications released by one batch",
                               buckets=BATCH_BUCKETS, registry=self.registry)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def observe(self, commit: float | None, published: int) -> None:
        """One batch: its commit time (None when it wrote nothing) and the publications it released."""
        if commit is not None:
            self.commit.observe(commit)
        if published:
            self.batch.observe(published)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
