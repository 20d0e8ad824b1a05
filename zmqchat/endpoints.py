"""Where a zmqchat server listens: one fact, shared by the server, the clients and the command lines."""

from __future__ import annotations

import random
import socket

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4444  # the PULL; the PUB is on the next port


def endpoints(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, in_endpoint: str | None = None,
              out_endpoint: str | None = None) -> tuple[str, str]:
    """The server's (in, out) endpoints: PULL on ``port``, PUB on ``port + 1`` unless given in full."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return (in_endpoint or f"tcp://{host}:{port}", out_endpoint or f"tcp://{host}:{port + 1}")


def free_port_pair(host: str = DEFAULT_HOST) -> int:
    """A port P on ``host`` with P and P+1 both free right now (for a server started elsewhere: tests,
    benchmarks), below the kernel's ephemeral range so that outgoing connections cannot take it meanwhile."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((host, port))
                b.bind((host, port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port pair on {host}")
