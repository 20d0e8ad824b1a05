"""``--metrics``: Prometheus metrics served by the real server, scraped over HTTP on loopback."""

from __future__ import annotations

import re
import time
import urllib.request

from zmqchat.endpoints import free_port_pair


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = re.compile(r"^(zmqchat_[a-z_]+(?:\{[^}]*\})?) (\S+)$", re.MULTILINE)
    return {m.group(1): float(m.group(2)) for m in pattern.finditer(text)}


def test_the_server_serves_its_counters_and_batch_histograms(chat):
    port = free_port_pair()
    server = chat.server("--metrics", f"127.0.0.1:{port}", "--rate", "0")
    server.expect(rf"metrics: http://127.0.0.1:{port}/metrics", stream="err")
    alice = chat.client("alice")
    alice.send(*[f"line {i}" for i in range(20)])
    alice.expect("<alice> line 19$")
    deadline = time.monotonic() + 10
    metrics = scrape(port)
    while metrics.get("zmqchat_messages_total", 0) < 20 and time.monotonic() < deadline:
        metrics = scrape(port)  # bounded: the scrape reads counters the loop updates as it goes
    assert metrics["zmqchat_messages_total"] == 20
    assert metrics["zmqchat_clients"] == 1 and metrics["zmqchat_rooms"] == 1
    assert metrics["zmqchat_commit_seconds_count"] >= 1 and metrics["zmqchat_publish_batch_count"] >= 1
    assert metrics['zmqchat_publish_batch_bucket{le="+Inf"}'] == metrics["zmqchat_publish_batch_count"]


def test_a_bad_metrics_address_is_a_clear_error(chat):
    server = chat.server("--metrics", "nonsense", wait_ready=False)
    assert server.wait(10) == 1
    server.expect("--metrics wants HOST:PORT", stream="err")
