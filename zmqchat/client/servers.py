"""Which servers a client talks to: one server, or the two of a hot-standby pair. Pure: no zmq, no files.

A server is named ``HOST:PORT`` (``[::1]:PORT`` for an IPv6 address): its PULL listens on PORT, its PUB on
PORT + 1, as with ``--host``/``--port`` (``zmqchat.endpoints``). A client subscribes to every server's PUB
(a standby publishes only its heartbeats and its answers) and pushes to one server only: a PUSH connected
to two PULLs would deal its messages out between them. ``ClientSession.server`` says which one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..endpoints import endpoints
from ..errors import ZmqchatError

MAX_SERVERS = 16  # servers one client knows, at most (a standby's redirects add to those it was given)


@dataclass(frozen=True)
class Server:
    """One server: ``label`` is what messages call it (``HOST:PORT``, or its endpoint when given in full);
    ``key`` its CURVE public key (z85), None without CURVE or when the client's one key serves every server."""

    label: str
    in_endpoint: str  # its PULL
    out_endpoint: str  # its PUB
    key: bytes | None = None


def server_problem(text: str) -> str | None:
    """Why ``text`` is not a server's ``HOST:PORT``, or None if it is."""
    try:
        parse_server(text)
    except ZmqchatError as exc:
        return str(exc)
    return None


def parse_server(text: str) -> tuple[str, int]:
    """(host, port) from ``HOST:PORT`` or ``[IPv6]:PORT``; ZmqchatError (saying why) otherwise."""
    text = text.strip()
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ZmqchatError(f"server {text!r}: write an IPv6 address in brackets, e.g. [::1]:4444")
    if not colon or not host or not port_text.isdigit() or any(c.isspace() or c in "/[]" for c in host):
        raise ZmqchatError(f"server {text!r} is not HOST:PORT (e.g. 127.0.0.1:4444)")
    port = int(port_text)
    if not 1 <= port <= 65534:
        raise ZmqchatError(f"server {text!r}: the port must be 1-65534 (its PUB is the next port)")
    return host, port


def label(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def same_server(a: str, b: str) -> bool:
    """Whether two labels name the same server as written (no name lookup: the session stays pure)."""
    return a.strip().lower() == b.strip().lower()


def server_from(item: str | tuple[str, int], key: bytes | None = None) -> Server:
    """A Server from ``"HOST:PORT"`` or ``(host, port)``; ZmqchatError for anything else."""
    if isinstance(item, str):
        host, port = parse_server(item)
    elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int):
        host, port = item
        parse_server(label(host, port))  # the same checks as for text
    else:
        raise ZmqchatError(f"server {item!r} is neither 'HOST:PORT' nor (host, port)")
    in_endpoint, out_endpoint = endpoints(host, port)
    return Server(label(host, port), in_endpoint, out_endpoint, key)


def server_list(items: Sequence[str | tuple[str, int]] | str) -> list[Server]:
    """Servers from a list (or a comma-separated text) of ``HOST:PORT``; ZmqchatError if one is bad,
    repeated, or there are none."""
    if isinstance(items, str):
        items = [item for item in items.split(",") if item.strip()]
    found = [server_from(item) for item in items]
    if not found:
        raise ZmqchatError("no server given (--servers wants HOST:PORT,HOST:PORT)")
    if len(found) > MAX_SERVERS:
        raise ZmqchatError(f"at most {MAX_SERVERS} servers")
    labels = [s.label.lower() for s in found]
    for n, name in enumerate(labels):
        if name in labels[:n]:
            raise ZmqchatError(f"server {found[n].label} is given twice")
    return found


def names(servers: Sequence[str]) -> str:
    """``A``, ``A or B``, ``A, B or C``: servers in a message."""
    servers = list(servers)
    return servers[0] if len(servers) == 1 else ", ".join(servers[:-1]) + " or " + servers[-1]
