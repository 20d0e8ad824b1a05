"""The server's I/O shell: binds PULL (everything clients send) and PUB (everything it publishes), and
runs ``ServerCore`` in one poll loop. Sockets are created, used and closed by ``run()``'s thread.

The loop owns the store: the core loads it when ``run()`` starts, and ``run()`` closes it on the way out.

Hot path: drain the PULL without blocking (up to BATCH messages), let the core sequence them, submit the
batch to the store, then publish what is durable. PUB never blocks; a slow subscriber loses messages at
its high-water mark and recovers them from history by sequence number.

Before the core sees a message the loop bounds what a peer can cost: frames beyond MAX_FRAMES are
received and dropped one by one, each message carries its peer's address (``Peer-Address``) for the
core's per-address budgets, and a ZAP handler (``GuardedAuthenticator``, on for plaintext too) refuses
handshakes beyond ``handshake_rate`` per address.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .. import keys
from .core import SUBSCRIBER_BYTES, ServerConfig, ServerCore, subscriber_queue
from .ratelimit import RateLimiter
from .storage import Store

log = logging.getLogger("zmqchat.server")

BATCH = 2048  # messages drained from PULL before publishing
BATCH_SECONDS = 0.004  # ... or this long, whichever comes first
PULL_HWM = 1000  # messages queued per connection before libzmq stops reading it (the sender waits)
PUB_SNDBUF = 256 * 1024  # bytes of kernel send buffer per subscriber (0: the system's, which grows to MBs)
HANDSHAKE_RATE = 20.0  # handshakes per second per address (both sockets), with a burst of
HANDSHAKE_BURST_SECONDS = 10.0  # this many seconds' worth: an office of 100 behind one NAT reconnecting at once
ZAP_DOMAIN = "zmqchat"  # set on both sockets so the ZAP handler sees every handshake, CURVE or not
PEER_ZAP_DOMAIN = "zmqchat-peer"  # a pair's peer link: only the peer's key
ZAP_TRY_LATER = b"300"  # ZAP status for "temporary error": the peer reconnects later
CLOSE_LINGER_MS = 1000  # time given to the "shutting down" notice on exit
HANDSHAKE_IVL_MS = 5000  # a connection that has not completed its ZMTP (or CURVE) handshake by then is closed
MAX_FRAMES = 4  # frames kept of one incoming message; the rest of a longer one is received and dropped
HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class Server:
    """Runs a ServerCore over ``store`` on real sockets until ``stop()``. CURVE is on when ``curve_secret``
    is given. The store is opened (loaded) and closed by ``run()``."""

    def __init__(self, config: ServerConfig, store: Store, in_endpoint: str, out_endpoint: str, *,
                 max_message_bytes: int, curve_secret: str | Path | None = None,
                 authorized_keys: str | Path | None = None, pub_hwm: int | None = None, sndbuf: int = PUB_SNDBUF,
                 handshake_rate: float = HANDSHAKE_RATE, metrics: tuple[str, int] | None = None) -> None:
        self.config = config
        self.metrics_at = metrics  # (host, port) to serve Prometheus metrics on, or None
        self.metrics = None
        self.store = store
        self.core: ServerCore | None = None  # made by run(), once the store is loaded
        pub_hwm = pub_hwm or subscriber_queue(SUBSCRIBER_BYTES, max_message_bytes)
        self.pub_hwm = pub_hwm
        if config.max_history_reply > config.reply_limit(pub_hwm):
            log.warning("history replies of %d messages do not fit a PUB queue of %d (at most %d would): "
                        "readers could lose their tails", config.max_history_reply, pub_hwm,
                        config.reply_limit(pub_hwm))
        self.sndbuf = sndbuf
        self.handshake_rate = handshake_rate
        self.in_endpoint = in_endpoint
        self.out_endpoint = out_endpoint
        self.max_message_bytes = max_message_bytes
        self.curve = keys.load_secret(curve_secret) if curve_secret else None
        self.authorized_keys = Path(authorized_keys) if authorized_keys else None
        if self.authorized_keys is not None and self.curve is None:
            from ..errors import ZmqchatError

            raise ZmqchatError("--authorized-keys needs --curve-secret (CURVE must be on)")
        self.bound_names: dict[str, str] = keys.load_allowlist(self.authorized_keys) if self.authorized_keys else {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._auth: GuardedAuthenticator | None = None
        self._handshakes_refused = 0  # of the authenticator's count, what the core has been told

    def stop(self) -> None:
        """Ask the loop to finish (safe from a signal handler or another thread)."""
        self._stop.set()

    def reload_keys(self) -> None:
        """Ask the loop to re-read the allowlist (SIGHUP)."""
        self._reload.set()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Load the store, bind, serve until ``stop()``, say goodbye, close the store. Raises StoreError
        (before binding) if the store cannot be used."""
        try:
            self.core = ServerCore(self.config, self.store)
            if self.metrics_at is not None:
                from .metrics import Metrics  # prometheus_client: imported only when asked for

                self.metrics = Metrics(self.core.snapshot, *self.metrics_at)
            self._run_sockets(self.core, on_ready)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self.store.close()

    def _run_sockets(self, core: ServerCore, on_ready: Callable[[], None] | None) -> None:
        raise_fd_limit()
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pub = ctx.socket(zmq.PUB)
        try:
            self._configure(ctx, pull, pub)
            pull.bind(self.in_endpoint)
            pub.bind(self.out_endpoint)
            self.in_endpoint = pull.last_endpoint.decode()
            self.out_endpoint = pub.last_endpoint.decode()
            if on_ready is not None:
                on_ready()
            self._loop(pull, pub)
            if self.core is not None:
                for frames in self.core.shutdown():
                    pub.send_multipart(frames)
        finally:
            pull.close(linger=0)
            pub.close(linger=CLOSE_LINGER_MS)
            if self._auth is not None:
                self._auth.stop()
            ctx.term()

    def _configure(self, ctx: zmq.Context, pull: zmq.Socket, pub: zmq.Socket) -> None:
        pull.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        pull.setsockopt(zmq.RCVHWM, PULL_HWM)
        for sock in (pull, pub):  # idle half-open connections must not hold file descriptors for long
            sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        # What a subscriber that stops reading can pin: SNDHWM publications (derived from a byte budget by
        # the caller) plus the kernel's send buffer.
        pub.setsockopt(zmq.SNDHWM, self.pub_hwm)
        if self.sndbuf > 0:
            pub.setsockopt(zmq.SNDBUF, self.sndbuf)
        pub.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if self.curve is None and self.handshake_rate <= 0:
            return
        self._auth = GuardedAuthenticator(ctx, RateLimiter(self.handshake_rate, self.handshake_rate * HANDSHAKE_BURST_SECONDS,
                                                           exempt=self.config.trusted),
                                          log=logging.getLogger("zmqchat.auth"))
        self._auth.start()
        for sock in (pull, pub):
            sock.zap_domain = ZAP_DOMAIN.encode()
        if self.curve is None:
            return  # plaintext: the authenticator allows every NULL handshake it does not rate-limit
        self._configure_auth()
        public, secret = self.curve
        for sock in (pull, pub):
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True

    def _configure_auth(self) -> None:
        assert self._auth is not None
        if self.authorized_keys is None:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
        else:
            self.bound_names = keys.load_allowlist(self.authorized_keys)
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(self.authorized_keys))
            if self.core is not None:  # the core decides what an unbound key's messages get
                self.core.bind_keys(self.bound_names)

    def _loop(self, pull: zmq.Socket, pub: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        monitor = None
        if self.curve is not None:
            # Refused handshakes are silent to the serving loop; the monitor lets us count and log them.
            monitor = pull.get_monitor_socket(HANDSHAKE_FAILURES)
            poller.register(monitor, zmq.POLLIN)
        try:
            self._serve(pull, pub, poller, monitor)
        finally:
            if monitor is not None:
                pull.disable_monitor()
                monitor.close(linger=0)

    def _serve(self, pull: zmq.Socket, pub: zmq.Socket, poller: zmq.Poller, monitor: zmq.Socket | None) -> None:
        core = self.core
        timeout_ms = max(10, int(min(0.1, core.config.heartbeat_interval / 4) * 1000))
        curve = self.curve is not None
        # Reading the peer's address costs about 1 us a message; on ipc:// it is a process, not an address.
        by_address = core.config.address_rate > 0 and self.in_endpoint.startswith("tcp://")
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._reload_keys()
            ready = dict(poller.poll(timeout_ms))
            if monitor is not None and monitor in ready:
                self._on_monitor(monitor)
            if self._auth is not None and self._auth.refused != self._handshakes_refused:
                refused = self._auth.refused  # counted on the authenticator's thread; read here, once
                core.handshakes_refused(refused - self._handshakes_refused)
                self._handshakes_refused = refused
            if pull in ready:
                self._drain(pull, core, curve, by_address)
            core.tick()
            out = core.flush()
            for frames in out:
                _send_frames(pub, frames)
            if self.metrics is not None:
                self.metrics.observe(core.take_commit_time(), len(out))

    @staticmethod
    def _drain(pull: zmq.Socket, core: ServerCore, curve: bool, by_address: bool) -> None:
        """Hand the core what PULL holds: up to BATCH messages, or BATCH_SECONDS' worth."""
        deadline = time.monotonic() + BATCH_SECONDS
        for i in range(BATCH):
            if i & 63 == 63 and time.monotonic() > deadline:
                break  # publish what is done: a flood of cheap refusals must not delay the rest
            try:
                key = None
                address = ""
                admitted = curve or by_address
                if admitted:
                    first = _raw_recv(pull, _NOBLOCK, False)
                    if by_address:
                        address = first.get("Peer-Address")
                    if curve:
                        key = first.get("User-Id")
                    if not core.admit(key, address):
                        _drop_rest(pull)
                        continue
                    frames = _recv_message(pull, first)
                else:
                    frames = _recv_message(pull, _raw_recv(pull, _NOBLOCK, False))
                if frames is None:
                    core.frame_bomb()
                else:
                    core.receive(frames, key, None, address, admitted)
            except zmq.Again:
                break
            except Exception as exc:  # noqa: BLE001 (receive() catches its own; this is the loop's)
                core.internal_error(exc)

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == int(ZAP_TRY_LATER):
                continue  # refused for rate by our own ZAP handler: counted there
            why = "key not authorized" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH else "handshake failed"
            if self.core is not None:
                self.core.auth_failed(why, event["endpoint"].decode(errors="replace"))

    def _reload_keys(self) -> None:
        try:
            self._configure_auth()
        except Exception as exc:  # noqa: BLE001 (a broken key file must not take the server down)
            log.error("could not reload authorized keys: %s", exc)
            return
        log.info("reloaded authorized keys: %d", len(self.bound_names))


class GuardedAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler (CURVE keys, allowlist) behind a per-address handshake budget: beyond it a
    handshake is refused with a temporary error before any key is looked at. ZAP sees handshakes, not
    disconnects, so this bounds how fast one address can open connections, not how many it holds open
    (for that, a kernel limit: docs/security.md). Runs on the authenticator's own thread; ``refused`` is
    read by the serving loop."""

    def __init__(self, context: zmq.Context, limiter: RateLimiter, log: logging.Logger) -> None:
        super().__init__(context, log=log)
        self.limiter = limiter
        self.refused = 0
        self.peer_key: bytes | None = None  # a pair's peer link (its own ZAP domain) takes this key only

    def _over_budget(self, msg: list[bytes]) -> bool:
        if len(msg) < 6:
            return False  # malformed: the base class answers it
        address = msg[3].decode("utf-8", "replace")
        if self.limiter.check(address, time.monotonic()) <= 0:
            return False
        self.refused += 1
        self._send_zap_reply(msg[1], ZAP_TRY_LATER, b"too many handshakes from this address")
        return True

    def _peer_check(self, domain: str, client_key: bytes) -> tuple[bool, bytes] | None:
        if domain != PEER_ZAP_DOMAIN:
            return None
        from zmq.utils import z85

        ok = self.peer_key is not None and z85.encode(client_key) == self.peer_key
        return ok, b"OK" if ok else b"not the peer's key"

    if inspect.iscoroutinefunction(ThreadAuthenticator._authenticate_curve):
        async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
            return self._peer_check(domain, client_key) or await super()._authenticate_curve(domain, client_key)
    else:  # pragma: no cover (older pyzmq)
        def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:  # type: ignore[override]
            return self._peer_check(domain, client_key) or super()._authenticate_curve(domain, client_key)

    if inspect.iscoroutinefunction(ThreadAuthenticator.handle_zap_message):  # pyzmq >= 25
        async def handle_zap_message(self, msg: list[bytes]) -> None:
            if not self._over_budget(msg):
                await super().handle_zap_message(msg)
    else:  # pragma: no cover (older pyzmq)
        def handle_zap_message(self, msg: list[bytes]) -> None:  # type: ignore[override]
            if not self._over_budget(msg):
                super().handle_zap_message(msg)


# Plain ints, and the Cython socket's own methods: send_multipart/recv_multipart and the Python wrapper
# combine enum flags and check arguments for every frame, which the profile showed as a seventh of the
# server's time at full speed.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_raw_send = getattr(zmq.backend.Socket, "send", zmq.Socket.send)
_raw_recv = getattr(zmq.backend.Socket, "recv", zmq.Socket.recv)
_raw_get = getattr(zmq.backend.Socket, "get", zmq.Socket.getsockopt)


def _drop_rest(sock: zmq.Socket) -> None:
    """Receive and drop the rest of a message whose first frame has been read."""
    while _raw_get(sock, _RCVMORE):
        _raw_recv(sock, _NOBLOCK)


def _recv_message(sock: zmq.Socket, first: zmq.Frame, limit: int = MAX_FRAMES) -> list[bytes] | None:
    """The frames of a multipart message whose first frame is ``first``; None if it had more than
    ``limit`` frames, which are then received and dropped one by one, never held in a list (libzmq
    itself has queued the whole message by now: it counts a message only at its last frame). Frames come
    as ``zmq.Frame`` for their ``more`` flag: reading RCVMORE with getsockopt costs an enum conversion
    per frame in pyzmq, about 1 us a message."""
    frames = [first.bytes]
    more = first.more
    while more:
        if len(frames) >= limit:
            _drop_rest(sock)
            return None
        frame = _raw_recv(sock, _NOBLOCK, False)
        frames.append(frame.bytes)
        more = frame.more
    return frames


def raise_fd_limit() -> None:
    """Every client costs the server two file descriptors: raise the soft limit to the hard one."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("file descriptors: could not raise the limit of %d to %d: %s", soft, hard, exc)
            return
        log.info("file descriptors: limit raised from %d to %d (about %d clients)", soft, hard, hard // 2)
    else:
        log.info("file descriptors: limit %d", soft)


def _send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """``send_multipart`` without its per-frame enum arithmetic (pyzmq ORs ``zmq.SNDMORE`` in Python).
    ``flags`` (NOBLOCK) apply to the first frame only: zmq.Again then means nothing was sent. The rest
    never waits (a high-water mark counts whole messages), and without NOBLOCK libzmq drops the rest of a
    message whose pipe died in the middle cleanly, instead of failing it half sent."""
    if len(frames) == 1:
        _raw_send(sock, frames[0], flags)
        return
    _raw_send(sock, frames[0], flags | _SNDMORE)
    for frame in frames[1:-1]:
        _raw_send(sock, frame, _SNDMORE)
    _raw_send(sock, frames[-1], 0)
