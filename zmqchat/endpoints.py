"""Where a zmqchat server listens: one fact, shared by the server, the clients and the command lines."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4444  # the PULL; the PUB is on the next port


def endpoints(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, in_endpoint: str | None = None,
              out_endpoint: str | None = None) -> tuple[str, str]:
    """The server's (in, out) endpoints: PULL on ``port``, PUB on ``port + 1`` unless given in full."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return (in_endpoint or f"tcp://{host}:{port}", out_endpoint or f"tcp://{host}:{port + 1}")
