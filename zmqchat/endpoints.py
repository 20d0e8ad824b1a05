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


def free_port_pair(host: str = DEFAULT_HOST, count: int = 2) -> int:
    """A port P on ``host`` with P and P+1 (up to P+count-1: a pair's server also binds P+2) free right now
    (for a server started elsewhere: tests, benchmarks), below the kernel's ephemeral range so that
    outgoing connections cannot take it meanwhile."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        socks = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(socks):
                sock.bind((host, port + offset))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no free port run of {count} on {host}")
