"""``zmqchat-server``: bind PULL + PUB and relay until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
from pathlib import Path

from .. import __version__
from .. import protocol as p
from ..endpoints import DEFAULT_HOST, DEFAULT_PORT, endpoints
from ..errors import ZmqchatError
from ..server.core import SUBSCRIBER_BYTES, ServerConfig, subscriber_queue
from ..server.loop import HANDSHAKE_RATE, PUB_SNDBUF, Server
from ..server.pair import HEARTBEAT as PEER_HEARTBEAT
from ..server.pair import MISSES as PEER_MISSES
from ..server.store import RETENTION, MemoryStore, SqliteStore, Store
from .common import apply_env_defaults, run_main, setup_logging

log = logging.getLogger("zmqchat.server")
DEFAULTS = ServerConfig()  # the rules' defaults are written once, in the config; the flags show them
PAIR_HEARTBEAT = 0.5  # seconds: a pair's client heartbeat unless told (clients count 3 missed ones as lost)


def host_port(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as (host, port); a clear error otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ZmqchatError(f"{flag} wants HOST:PORT, e.g. 127.0.0.1:9464 (got {text!r})")
    return host, int(port)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "zmqchat"


def history_file(data_dir: Path, in_endpoint: str) -> Path:
    """One history file per server address, so two servers on one machine never share one."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", in_endpoint.split("://", 1)[-1]).strip("-")
    return data_dir / f"history-{slug}.sqlite3"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqchat-server", description="Chat and broadcast server: PULL for what clients send, PUB for what "
        "it publishes. Every flag can also be set as ZMQCHAT_<FLAG> (e.g. ZMQCHAT_PORT=5555).")
    parser.add_argument("--version", action="version", version=f"zmqchat {__version__}")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=DEFAULT_HOST, help="address to bind; 0.0.0.0 for remote clients "
                     "(default: %(default)s)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help="PULL port; PUB binds port+1 (default: %(default)s)")
    net.add_argument("--in-endpoint", help="full PULL endpoint instead of host/port, e.g. ipc:///tmp/chat-in")
    net.add_argument("--out-endpoint", help="full PUB endpoint instead of host/port+1")
    chat = parser.add_argument_group("chat")
    chat.add_argument("--motd", default=DEFAULTS.motd, help="welcome text sent to each client that joins")
    chat.add_argument("--heartbeat-interval", type=float, default=None,
                      help=f"seconds between heartbeats, both ways (default: {DEFAULTS.heartbeat_interval:g}; "
                      f"{PAIR_HEARTBEAT:g} in a pair, so that clients notice a lost active within the failover aim)")
    chat.add_argument("--heartbeat-misses", type=int, default=DEFAULTS.heartbeat_misses,
                      help="missed client heartbeats before it is timed out (default: %(default)s)")
    chat.add_argument("--topic-lock", action="store_true", default=DEFAULTS.topic_lock,
                      help="only who first set a room's topic (by name, or by key under CURVE) may change it")
    chat.add_argument("--presence-limit", type=int, default=DEFAULTS.presence_limit,
                      help="rooms with more members than this do not announce joins and leaves (default: %(default)s)")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics on HOST:PORT (default: off); see docs/operations.md")
    hist = parser.add_argument_group("history")
    hist.add_argument("--history", type=int, default=RETENTION,
                      help="messages kept per room, on disk (default: %(default)s)")
    hist.add_argument("--history-cache", type=int, default=DEFAULTS.history_cache,
                      help="newest messages per room also kept in memory, to serve joins and gap fills without "
                           "reading the disk (default: %(default)s)")
    hist.add_argument("--backlog", type=int, default=DEFAULTS.backlog,
                      help="messages replayed to a client joining a room (default: %(default)s)")
    hist.add_argument("--data-dir", help=f"where the history database lives (default: {default_data_dir()})")
    hist.add_argument("--no-persist", action="store_true", help="keep history in memory only")
    hist.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                      help="keep a search index of the history for /search, written by a process of its own "
                           "(default: on; off saves its CPU per message)")
    hist.add_argument("--repair", action="store_true", help="delete damaged rows of the history database "
                      "(counted in a warning) instead of refusing to start; see docs/history.md")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-message-bytes", type=int, default=DEFAULTS.max_message_bytes,
                        help="largest message accepted on the wire (a larger one gets an error; a single "
                        "frame over it cuts the sender off) (default: %(default)s)")
    limits.add_argument("--max-text-bytes", type=int, default=DEFAULTS.max_text_bytes,
                        help="largest chat message text in UTF-8 bytes (default: %(default)s)")
    limits.add_argument("--rate", type=float, default=DEFAULTS.rate,
                        help="messages per second per client, 0 for no limit (default: %(default)s)")
    limits.add_argument("--burst", type=float, default=DEFAULTS.burst,
                        help="messages a client may send at once before the rate applies (default: %(default)s)")
    limits.add_argument("--subscriber-bytes", type=int, default=SUBSCRIBER_BYTES,
                        help="memory one subscriber that stops reading may pin: the PUB queue holds this many "
                        "bytes of the largest publications (default: %(default)s)")
    limits.add_argument("--pub-hwm", type=int, default=0,
                        help="publications queued per subscriber before PUB drops for it, instead of the number "
                        "--subscriber-bytes gives; a client that falls behind recovers from history")
    limits.add_argument("--sndbuf", type=int, default=PUB_SNDBUF,
                        help="kernel send buffer per subscriber in bytes, 0 for the system's (default: %(default)s)")
    limits.add_argument("--work-rate", type=float, default=DEFAULTS.work_rate,
                        help="publications per second that requests (history, who, rooms, stats) may cost, all "
                        "sessions together; beyond it they are told 'busy'; 0 for no limit (default: %(default)s)")
    limits.add_argument("--address-rate", type=float, default=DEFAULTS.address_rate,
                        help="messages per second one address (or CURVE key) may send; more are dropped unread; "
                        "0 for no limit (default: %(default)s)")
    limits.add_argument("--handshake-rate", type=float, default=HANDSHAKE_RATE,
                        help="connection handshakes per second per address; 0 for no limit (default: %(default)s)")
    limits.add_argument("--trusted", default="127.0.0.1,::1",
                        help="comma-separated addresses exempt from the per-address limits, e.g. a gateway that "
                        "speaks for many people; '' for none (default: %(default)s)")
    pair = parser.add_argument_group("hot standby pair (docs/cluster.md)")
    pair.add_argument("--peer", metavar="HOST:PORT",
                      help="the other server of a pair, by its client port: this server binds its peer link on its "
                      "own port+2 and connects to the peer's port+2")
    pair.add_argument("--peer-bind", help="full endpoint of this server's peer link instead, e.g. tcp://0.0.0.0:4446")
    pair.add_argument("--peer-connect", help="full endpoint of the peer's peer link instead, e.g. tcp://10.0.0.2:4446")
    pair.add_argument("--advertise", metavar="HOST:PORT",
                      help="the address clients reach this server at, which its peer tells clients that ask the "
                      "standby (default: --host:--port, unless --host is 0.0.0.0 or ::; else the --peer address "
                      "the peer was given)")
    pair.add_argument("--role", choices=["primary", "backup"], default=None,
                      help="on the pair's first start (empty stores): primary becomes active alone if the peer "
                      "is not up, backup waits for it (default: the first one up)")
    pair.add_argument("--peer-heartbeat", type=float, default=PEER_HEARTBEAT,
                      help="seconds between state messages on the peer link (default: %(default)s)")
    pair.add_argument("--peer-misses", type=int, default=PEER_MISSES,
                      help="peer heartbeats missed before the peer counts as silent (default: %(default)s)")
    pair.add_argument("--peer-timeout", type=float, default=None,
                      help="seconds the active waits for the standby's acknowledgement before it runs alone "
                      "(default: --peer-heartbeat x --peer-misses)")
    pair.add_argument("--peer-key", help="the peer server's CURVE public key file; with --curve-secret the peer "
                      "link is CURVE and takes only this key")
    sec = parser.add_argument_group("security (CURVE)")
    sec.add_argument("--curve-secret", help="server secret key file; turns CURVE on")
    sec.add_argument("--authorized-keys", help="directory of client public keys allowed in, each bound to a name; "
                     "re-read on SIGHUP")
    out = parser.add_argument_group("output")
    out.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="(default: %(default)s; debug logs every message)")
    out.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    out.add_argument("--stats-interval", type=float, default=60.0,
                     help="seconds between stats log lines, 0 for none (default: %(default)s)")
    apply_env_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("warning" if args.quiet else args.log_level)
    return run_main(lambda: serve(args))


def pair_server(args: argparse.Namespace, config: ServerConfig, path: Path | None, in_ep: str, out_ep: str,
                common: dict) -> Server:
    """A PairServer from the flags: the peer link's endpoints from --peer (port+2 each) or given in full."""
    from ..server.pairloop import PairServer

    if path is None:
        raise ZmqchatError("a pair keeps its history on disk: --peer cannot be used with --no-persist")
    if args.peer_misses < 1 or args.peer_heartbeat <= 0 or (args.peer_timeout is not None and args.peer_timeout <= 0):
        raise ZmqchatError("--peer-heartbeat and --peer-timeout must be positive, --peer-misses 1 or more")
    if args.peer_key and not args.curve_secret:
        raise ZmqchatError("--peer-key needs --curve-secret (the peer link is CURVE only when the server is)")
    if args.curve_secret and not args.peer_key:
        raise ZmqchatError("under CURVE the peer link needs --peer-key (the peer server's public key)")
    peer_client = ""
    bind, connect = args.peer_bind, args.peer_connect
    if args.peer:
        host, port = host_port(args.peer, "--peer")
        peer_client = args.peer
        connect = connect or f"tcp://{host}:{port + 2}"
        bind = bind or f"tcp://{args.host}:{args.port + 2}"
    if not (bind and connect):
        raise ZmqchatError("a pair needs --peer HOST:PORT, or both --peer-bind and --peer-connect")
    advertise = args.advertise or ("" if args.host in ("0.0.0.0", "::", "*") or args.in_endpoint
                                   else f"{args.host}:{args.port}")
    if args.advertise:
        host_port(args.advertise, "--advertise")
    return PairServer(config, lambda active: SqliteStore(path, args.history, repair=args.repair,
                                                         search=args.search and active),
                      in_ep, out_ep, peer_bind=bind, peer_connect=connect, peer_client=peer_client, advertise=advertise,
                      prefer=args.role or "", peer_timeout=args.peer_timeout, peer_misses=args.peer_misses,
                      peer_heartbeat=args.peer_heartbeat, peer_secret=args.curve_secret, peer_key=args.peer_key,
                      **common)


def serve(args: argparse.Namespace) -> int:
    paired = bool(args.peer or args.peer_bind or args.peer_connect)
    if args.heartbeat_interval is None:
        args.heartbeat_interval = PAIR_HEARTBEAT if paired else DEFAULTS.heartbeat_interval
    if args.max_message_bytes < p.MIN_MAX_MESSAGE_BYTES:
        raise ZmqchatError(f"--max-message-bytes must be at least {p.MIN_MAX_MESSAGE_BYTES}")
    if args.max_text_bytes > args.max_message_bytes - 512:
        raise ZmqchatError("--max-text-bytes must leave room for the envelope (512 bytes under --max-message-bytes)")
    if args.subscriber_bytes < 1 or args.pub_hwm < 0 or args.sndbuf < 0:
        raise ZmqchatError("--subscriber-bytes must be positive; --pub-hwm and --sndbuf 0 or more")
    if min(args.work_rate, args.address_rate, args.handshake_rate) < 0:
        raise ZmqchatError("--work-rate, --address-rate and --handshake-rate must be 0 (no limit) or more")
    if not 0.01 <= args.heartbeat_interval <= p.MAX_INTERVAL or args.heartbeat_misses < 1:
        raise ZmqchatError(f"--heartbeat-interval must be 0.01 to {p.MAX_INTERVAL:g} seconds and "
                           "--heartbeat-misses >= 1")
    if args.history < 1 or args.history_cache < 1:
        raise ZmqchatError("--history and --history-cache must be 1 or more")
    in_ep, out_ep = endpoints(args.host, args.port, args.in_endpoint, args.out_endpoint)
    path = None if args.no_persist else history_file(Path(args.data_dir) if args.data_dir else default_data_dir(), in_ep)
    pub_hwm = args.pub_hwm or subscriber_queue(args.subscriber_bytes, args.max_message_bytes)
    # Opened by the server's run(): a file it cannot use (damaged, foreign, newer, locked, a bad path) raises
    # StoreError there, before anything is bound: one line, exit 1.
    store: Store = (MemoryStore(args.history) if path is None
                    else SqliteStore(path, args.history, repair=args.repair, search=args.search))
    config = ServerConfig(motd=args.motd, heartbeat_interval=args.heartbeat_interval,
                          heartbeat_misses=args.heartbeat_misses, backlog=args.backlog, rate=args.rate,
                          burst=args.burst, max_text_bytes=args.max_text_bytes,
                          max_message_bytes=args.max_message_bytes, stats_interval=args.stats_interval,
                          presence_limit=args.presence_limit, work_rate=args.work_rate,
                          address_rate=args.address_rate, max_history_reply=ServerConfig.reply_limit(pub_hwm),
                          history_cache=args.history_cache, topic_lock=args.topic_lock,
                          trusted=frozenset(a.strip() for a in args.trusted.split(",") if a.strip()))
    common = {"max_message_bytes": args.max_message_bytes, "curve_secret": args.curve_secret,
              "authorized_keys": args.authorized_keys, "pub_hwm": pub_hwm, "sndbuf": args.sndbuf,
              "handshake_rate": args.handshake_rate,
              "metrics": host_port(args.metrics, "--metrics") if args.metrics else None}
    if not paired:
        server: Server = Server(config, store, in_ep, out_ep, **common)
    else:
        server = pair_server(args, config, path, in_ep, out_ep, common)
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: server.reload_keys())
    if paired and hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: server.force_active())  # type: ignore[attr-defined]

    def ready() -> None:
        log.info("zmqchat-server listening: in %s, out %s", server.in_endpoint, server.out_endpoint)
        if paired:
            log.info("pair: peer link bound at %s, peer at %s; %s", server.peer_bind,  # type: ignore[attr-defined]
                     server.peer_connect, server.status)  # type: ignore[attr-defined]
            log.info("history: %s (last %d messages per room)", path, args.history)
            if server.metrics is not None:
                log.info("metrics: http://%s:%d/metrics", server.metrics_at[0], server.metrics.port)
        else:
            _ready_single()

    def _ready_single() -> None:
        assert server.core is not None
        cache = server.core.sequencer.cache
        if path is None:
            log.info("history: in memory only, last %d messages per room", args.history)
        else:
            log.info("history: %s (last %d messages per room, newest %d in memory, %d loaded)", path,
                     args.history, cache, server.core.sequencer.size())
        log.info("limits: %d publications queued per subscriber (%d bytes of the largest), history replies "
                 "of at most %d messages", pub_hwm, pub_hwm * (args.max_message_bytes + 512), config.max_history_reply)
        if args.backlog > config.max_history_reply:
            log.warning("--backlog %d is more than one history reply holds (%d, a quarter of the PUB queue): "
                        "joiners see the newest %d; raise --subscriber-bytes or --pub-hwm", args.backlog,
                        config.max_history_reply, config.max_history_reply)
        if server.metrics is not None:
            log.info("metrics: http://%s:%d/metrics", server.metrics_at[0], server.metrics.port)
        if server.curve is None:
            log.info("security: none (plaintext; anyone who can reach the ports can chat)")
        elif server.authorized_keys is None:
            log.warning("security: CURVE encryption on, but any client key may connect (no --authorized-keys)")
        else:
            log.info("security: CURVE on, %d authorized keys from %s", len(server.bound_names), server.authorized_keys)

    try:
        server.run(on_ready=ready)
    except Exception as exc:
        import zmq

        if isinstance(exc, zmq.ZMQError):
            raise ZmqchatError(f"cannot bind {in_ep} / {out_ep}: {exc}") from exc
        raise
    log.info("server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
