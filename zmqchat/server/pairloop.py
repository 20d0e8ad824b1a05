"""The pair's I/O shell: a ``Server`` that is one of an active/standby pair (docs/cluster.md).

Besides PULL and PUB it binds a PULL for its peer (``peer_bind``, by default its port + 2) and connects a
PUSH to the peer's (``peer_connect``). Everything that goes from one server to the other (state
heartbeats, sync requests, batches, acknowledgements) goes over that one PUSH, so it arrives in order. The
rules live in ``server.pair`` (``Roles``, ``Replica``, ``Follower``); this loop owns the sockets and the
store, and moves between roles:

- active: a ``ServerCore`` over a ``Replica`` of the store, exactly the single server's hot path, plus
  one bounded catch-up step per turn while a standby is being caught up;
- standby (and starting): no core; batches from the active are committed to the store, then
  acknowledged; a client's hello is answered with ``not_active`` (naming the active), or, when the active
  is silent and this standby was in sync, taken as the client's vote: the standby takes over and the
  hello is the new core's first message.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from .. import protocol as p
from .core import LogLimiter, ServerConfig, ServerCore
from .loop import (
    _NOBLOCK,
    BATCH,
    PEER_ZAP_DOMAIN,
    Server,
    _raw_recv,
    _recv_message,
    _send_frames,
)
from .pair import (
    _PREFER,
    ACTIVE,
    HEARTBEAT,
    MAX_PEER_FRAMES,
    MISSES,
    STANDBY,
    Follower,
    PeerError,
    Replica,
    Roles,
    decode,
    encode,
    forced_skip,
    merge,
    not_active,
    peer_state,
    rows_top,
    standby_beat,
)
from .storage import Batch, Store, StoreError

log = logging.getLogger("zmqchat.server")

PEER_HWM = 100_000  # peer messages queued for a slow standby before sends fail (then the active goes alone)
NOT_ACTIVE_PER_SECOND = 2000  # answers a standby gives clients that think it active; the rest are dropped
HANDOVER_WAIT = 1.0  # seconds a stopping active waits for the standby's last acknowledgements
PEER_FRAMES_LIMIT = 1 << 16  # frames of one peer message read at most; a longer one is dropped unread (a
# batch is one tick's messages, BATCH at most, unless the store refused some ticks' batches meanwhile)
STANDBY_COMMIT_ROWS = 5000  # rows a standby commits in one transaction at most (a catch-up comes in 500s)
FORCED_SKIP = 1_000_000  # numbers skipped per room when an out-of-sync standby is forced active


class PairServer(Server):
    """A Server that is one of a pair. ``make_store(active)`` makes a fresh store object for this server's
    file (the loop reopens it at each change of role); a store that only follows (``active`` False) need
    keep no search index: the active's store builds its index from the rows when it opens."""

    def __init__(self, config: ServerConfig, make_store: Callable[[bool], Store], in_endpoint: str, out_endpoint: str, *,
                 peer_bind: str, peer_connect: str, peer_client: str = "", advertise: str = "", prefer: str = "",
                 peer_timeout: float | None = None, peer_misses: int = MISSES, peer_heartbeat: float = HEARTBEAT,
                 peer_secret: str | Path | None = None, peer_key: str | Path | None = None, **kwargs) -> None:
        super().__init__(config, make_store(False), in_endpoint, out_endpoint, **kwargs)
        self.make_store = make_store
        self.peer_bind = peer_bind
        self.peer_connect = peer_connect
        self.peer_client = peer_client  # HOST:PORT clients use for the peer: what not_active tells them
        self.peer_timeout = peer_timeout if peer_timeout is not None else peer_heartbeat * peer_misses
        self.roles = Roles(node=secrets.token_hex(6), term=0, position=0, empty=True, prefer=_PREFER[prefer],
                           heartbeat=peer_heartbeat, misses=peer_misses, client=advertise)
        self.replica: Replica | None = None
        self.follower: Follower | None = None
        self._force = threading.Event()
        self._epoch = ""
        self._not_active = (0.0, 0)  # (second, answers in it)
        self.peer_dropped = 0  # peer-link messages malformed or stale
        self._peer_errors = LogLimiter(time.monotonic, traceback_once=True)
        self.refused_logged = ""
        self.store_term = 0  # the term last saved in the store while following
        self._peer_out: zmq.Socket | None = None
        from .. import keys

        self._peer_curve = keys.load_secret(peer_secret) if peer_secret and peer_key else None
        self._peer_key = keys.load_public(peer_key) if peer_secret and peer_key else None

    # -- control

    def force_active(self) -> None:
        """An operator's order (SIGUSR1): become active now, whatever the peer says (what this store lacks
        is lost). Safe from a signal handler."""
        self._force.set()

    @property
    def role(self) -> str:
        return self.roles.role

    @property
    def status(self) -> str:
        if self.roles.role == ACTIVE and self.replica is not None:
            return f"active (term {self.roles.term}), {self.replica.status}"
        if self.roles.role == STANDBY and self.follower is not None:
            if self.follower.refused:
                return f"standby, refused: {self.follower.refused}"
            return "standby, in sync" if self.follower.streaming else "standby, catching up"
        return self.roles.role

    def _metrics_snapshot(self) -> dict[str, int]:
        """The core's counters (while active) and the pair's gauges, read on the scraping thread."""
        core = self.core
        replica, follower = self.replica, self.follower
        in_sync = replica.in_sync if replica is not None else follower.streaming if follower is not None else False
        return {**(core.snapshot() if core is not None else {}), "pair_active": int(self.roles.role == ACTIVE),
                "pair_term": self.roles.term, "pair_position": self.roles.position, "pair_in_sync": int(in_sync)}

    # -- running

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        try:
            loaded = self.store.load(self.config.history_cache)  # raises StoreError before anything is bound
            self._epoch = loaded.epoch
            self.roles.term, self.roles.position = loaded.term, loaded.position
            # empty: the pair's very first start (no message, never followed nor led a peer)
            self.roles.empty = not any(loaded.tops.values()) and loaded.term == 0 and loaded.position == 0
            self.roles.started = self.roles.born = time.monotonic()
            if self.metrics_at is not None:
                from .metrics import Metrics

                self.metrics = Metrics(self._metrics_snapshot, *self.metrics_at)
            self._run_sockets(None, on_ready)  # type: ignore[arg-type]
        finally:
            if self.metrics is not None:
                self.metrics.close()
            self.store.close()

    def _loop(self, pull: zmq.Socket, pub: zmq.Socket) -> None:
        ctx = pull.context
        peer_in = ctx.socket(zmq.PULL)
        peer_out = ctx.socket(zmq.PUSH)
        try:
            peer_in.setsockopt(zmq.MAXMSGSIZE, max(64 * 1024 * 1024, self.max_message_bytes * 4))
            peer_out.setsockopt(zmq.SNDHWM, PEER_HWM)
            peer_out.setsockopt(zmq.IMMEDIATE, 1)  # nothing queues for a peer that is not connected
            peer_out.setsockopt(zmq.LINGER, 0)
            for sock in (peer_in, peer_out):  # a peer whose machine died is noticed without TCP's minutes
                sock.setsockopt(zmq.HEARTBEAT_IVL, 500)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 2000)
            if self._peer_curve is not None:
                public, secret = self._peer_curve
                peer_in.curve_secretkey, peer_in.curve_publickey, peer_in.curve_server = secret, public, True
                peer_in.zap_domain = PEER_ZAP_DOMAIN.encode()
                peer_out.curve_secretkey, peer_out.curve_publickey = secret, public
                peer_out.curve_serverkey = self._peer_key
                self._allow_peer(ctx)
            peer_in.bind(self.peer_bind)
            self.peer_bind = peer_in.last_endpoint.decode()
            peer_out.connect(self.peer_connect)
            self._peer_out = peer_out
            self._serve_pair(pull, pub, peer_in, peer_out)
            self._hand_over(pub, peer_in, peer_out)
        finally:
            peer_in.close(linger=0)
            peer_out.close(linger=0)

    def _allow_peer(self, ctx: zmq.Context) -> None:
        """Under CURVE the peer link takes only the peer's key (a ZAP domain of its own)."""
        if self._auth is None:  # --handshake-rate 0 and no client CURVE: an authenticator for the link alone
            from .loop import GuardedAuthenticator
            from .ratelimit import RateLimiter

            self._auth = GuardedAuthenticator(ctx, RateLimiter(0, 0), log=logging.getLogger("zmqchat.auth"))
            self._auth.start()
        self._auth.peer_key = self._peer_key

    def _serve_pair(self, pull: zmq.Socket, pub: zmq.Socket, peer_in: zmq.Socket, peer_out: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        poller.register(peer_in, zmq.POLLIN)
        timeout_ms = max(10, int(min(0.05, self.roles.heartbeat / 4, self.config.heartbeat_interval / 4) * 1000))
        curve = self.curve is not None
        by_address = self.config.address_rate > 0 and self.in_endpoint.startswith("tcp://")
        next_state = next_beat = 0.0
        while not self._stop.is_set():
            if self._reload.is_set():
                self._reload.clear()
                self._reload_keys()
            if self._force.is_set():
                self._force.clear()
                log.warning("pair: forced active by the operator (what this store lacks is lost)")
                self.roles.forced = True
            catching_up = self.replica is not None and bool(self.replica.nonce) and not self.replica.streaming
            ready = dict(poller.poll(0 if catching_up else timeout_ms))
            now = time.monotonic()
            if peer_in in ready:
                self._peer_frames(peer_in, peer_out, now)
            self.roles.in_sync = self.follower is not None and self.follower.streaming
            move = self.roles.tick(now)
            if move is not None:
                self._become(move, now)
            if now >= next_state:
                next_state = now + self.roles.heartbeat
                self._send_peer(peer_out, self.roles.state(self._epoch, self._synced(), now))
            if self.roles.role == ACTIVE and self.core is not None and self.replica is not None:
                core = self.core
                if pull in ready:
                    self._drain(pull, core, curve, by_address)
                core.tick()
                self.replica.tick()
                if self.replica.went_alone:  # the standby hears it before anything is published alone
                    self.replica.went_alone = False
                    self._send_peer(peer_out, self.roles.state(self._epoch, False, now))
                out = core.flush()
                for frames in out:
                    _send_frames(pub, frames)
                if catching_up:  # after the flush: the snapshot then holds nothing the store does not
                    self.replica.catch_up(core.producers.rows(), core.sequencer.topic_rows(),
                                          core.sequencer.settled())
                self.roles.position = self.replica.position
                if self.metrics is not None:
                    self.metrics.observe(core.take_commit_time(), len(out))
            else:
                if pull in ready:
                    self._standby_drain(pull, pub, now, curve, by_address)
                if now >= next_beat and self.core is None:
                    next_beat = now + self.config.heartbeat_interval
                    _send_frames(pub, standby_beat(time.time(), self.roles.term))
                if (self.follower is not None and self.follower.due() and self.roles.peer is not None
                        and self.roles.peer.role == ACTIVE):
                    info = self.store.load(1)
                    have = rows_top(info.tops, info.skipped)  # rows it holds, not numbers it skipped
                    request = self.follower.sync(info.term, info.position, info.epoch,
                                                 not any(info.tops.values()), have)
                    if request is not None:
                        self._send_peer(peer_out, request)
            if self.replica is not None:
                outbox, self.replica.outbox = self.replica.outbox, []
                for frames in outbox:
                    if not self._send_peer(peer_out, frames):
                        self.replica.go_alone("the link to the standby is full or down")
                        break
            self._log_notices()

    # -- the peer link

    def _send_peer(self, sock: zmq.Socket, frames: list[bytes]) -> bool:
        try:
            _send_frames(sock, frames, _NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _synced(self) -> bool:
        if self.roles.role == ACTIVE:
            return self.replica is not None and self.replica.streaming
        return self.follower is not None and self.follower.streaming

    def _peer_frames(self, peer_in: zmq.Socket, peer_out: zmq.Socket, now: float) -> None:
        pending: list[Batch] = []
        rows = 0  # in pending
        for _ in range(BATCH):
            if rows >= STANDBY_COMMIT_ROWS:
                break  # commit this much now: a long transaction would delay the state messages the active awaits
            try:
                frames = _recv_message(peer_in, _raw_recv(peer_in, _NOBLOCK, False), PEER_FRAMES_LIMIT)
            except zmq.Again:
                break
            try:
                if frames is None:
                    raise PeerError(f"more than {PEER_FRAMES_LIMIT} frames")
                kind, header, bodies = decode(frames)
                if len(bodies) > MAX_PEER_FRAMES and kind not in (b"batch", b"synced"):
                    raise PeerError("too many frames")
                held = len(pending)
                self._peer_message(kind, header, bodies, pending, now)
                rows = rows + len(pending[-1].messages) if len(pending) > held else 0 if not pending else rows
            except PeerError as exc:
                self.peer_dropped += 1
                log.debug("peer link: dropped: %s", exc)
            except Exception as exc:  # noqa: BLE001 (whatever the peer sends, this server stays up)
                self.peer_dropped += 1
                self._peer_errors.warn("peer link: could not handle a %r message: %r", frames[1:2], exc)
        self._commit(pending, peer_out)

    def _peer_message(self, kind: bytes, header: dict, bodies: list[bytes], pending: list[Batch], now: float) -> None:
        if kind == b"state":
            state = peer_state(header, now)
            if self.replica is not None:
                self.replica.heard()
            follower = self.follower
            if follower is not None and follower.streaming and state.role == ACTIVE and (
                    state.term != follower.term or not state.synced):
                follower.lost_stream()  # the active restarted, or went alone: ask again
                self.roles.in_sync = False
            move = self.roles.on_peer(state)
            if move is not None:
                self._become(move, now)
            return
        if kind == b"sync" and self.replica is not None and self.core is not None:
            self.replica.on_sync(header, self.core.sequencer.epoch)
            return
        if kind == b"ack" and self.replica is not None:
            self.replica.on_ack(header)
            return
        if kind == b"handover" and self.follower is not None:
            self._commit(pending, None)  # what came before it first
            if self.follower.streaming and header.get("p") == self.follower.position:
                log.warning("pair: the active handed over: taking over")
                self.roles.forced = True
            else:
                self.roles.in_sync = False
            return
        follower = self.follower
        if follower is None:
            self.peer_dropped += 1
            return
        batch = follower.receive(kind, header, bodies)
        if kind == b"start" and header.get("s") == follower.nonce:
            pending.clear()
            self._prepare(follower)
        if kind == b"refuse" and follower.refused and follower.refused != self.refused_logged:
            self.refused_logged = follower.refused
            log.error("pair: the active will not replicate to this server: %s", follower.refused)
        if batch is not None:
            pending.append(batch)
            if kind == b"synced":  # committed (and acknowledged) before what follows, with the term it names
                self._commit(pending, self._peer_out)

    def _prepare(self, follower: Follower) -> None:
        """A catch-up starts: start over (file moved aside) if told to; take the active's epoch if empty."""
        if follower.reset:
            self._move_aside()
        info = self.store.load(1)
        if not follower.reset:  # what it skipped above its rows (a reboot's guess) comes from the active now
            try:
                self.store.unskip(rows_top(info.tops, info.skipped))
            except StoreError as exc:
                log.error("pair: %s", exc)
            info = self.store.load(1)
        if info.epoch != follower.epoch:
            try:
                self.store.adopt(follower.epoch)
            except StoreError as exc:
                log.error("pair: %s", exc)
                follower.refused = str(exc)
                return
            self._epoch = follower.epoch

    def _move_aside(self) -> None:
        path = getattr(self.store, "path", None)
        self.store.close()
        if path is not None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            index = getattr(self.store, "index_path", None)
            for base in [path] + ([index] if index is not None else []):
                for suffix in ("", "-wal", "-shm"):
                    old = Path(str(base) + suffix)
                    if old.exists():
                        old.rename(Path(f"{old}.diverged-{stamp}"))
            log.warning("pair: this store held batches the active never had (it was deposed): moved aside as "
                        "%s.diverged-%s; starting over from the active", path, stamp)
        self.store = self.make_store(False)
        self.store.load(self.config.history_cache)
        self.store_term = 0  # the new file has no term yet: the next synced writes it

    def _commit(self, pending: list[Batch], peer_out: zmq.Socket | None) -> None:
        """Commit what the active sent in one transaction, then acknowledge it (``peer_out``)."""
        follower = self.follower
        if follower is None or not pending:
            return
        batch = merge(pending, 0)
        pending.clear()
        try:
            self.store.submit(batch)
            if follower.streaming and follower.term and follower.term != self.store_term:
                self.store.set_term(follower.term, follower.terms)  # the newest term, before any ack says so
                self.store.skip(follower.skipped, follower.floor)  # and the numbers the active never gives out
                self.store_term = follower.term
                self.roles.term = max(self.roles.term, follower.term)
        except Exception as exc:  # noqa: BLE001 (StoreError, or what odd peer input made of a row: never fatal)
            self._peer_errors.warn("pair: could not commit what the active sent: %s", exc)
            follower.lost_stream()
            return
        self.roles.position = follower.position
        self.roles.empty = False
        if peer_out is not None:  # live batches, or the catch-up's messages: what is committed
            self._send_peer(peer_out, follower.ack())

    # -- roles

    def _become(self, role: str, now: float) -> None:
        if role == self.roles.role:
            return
        if role == ACTIVE:
            forced = self.roles.forced and not self.roles.in_sync
            if forced and not self.roles.empty:
                # an operator's order, without all the old active numbered: never reuse a number clients saw
                loaded = self.store.load(1)
                tops = loaded.tops
                try:
                    self.store.skip(*forced_skip(loaded, FORCED_SKIP))
                    log.warning("pair: forced while not in sync: %d numbers skipped in each of %d rooms, and new "
                                "rooms number from above it (clients are told they may be lost)", FORCED_SKIP,
                                len(tops))
                except StoreError as exc:
                    log.error("pair: could not skip numbers ahead: %s", exc)
            self.follower = None
            self.store.close()
            self.replica = Replica(self.make_store(True), time.monotonic, self.peer_timeout)
            self.store = self.replica
            self.roles.became(ACTIVE, now, time.time() if forced else None)
            self.core = ServerCore(self.config, self.replica, term=self.roles.term, role=ACTIVE)
            self.core.pair_status = lambda: self.status
            self.replica.start_term(self.roles.term)
            self.roles.position = self.replica.position
            self._epoch = self.core.sequencer.epoch
            if self.authorized_keys is not None:
                self.core.bind_keys(self.bound_names)
            log.warning("pair: ACTIVE (term %d), serving clients; running alone until a standby has caught up",
                        self.roles.term)
        else:
            if self.core is not None:
                log.warning("pair: no longer active: %d sessions end, publications not acknowledged by the "
                            "peer are dropped (their senders resend them)", len(self.core.presence))
            self.core = None
            self.replica = None
            self.store.close()
            self.store = self.make_store(False)
            loaded = self.store.load(self.config.history_cache)
            self._epoch = loaded.epoch
            self.roles.position = loaded.position
            self.roles.became(role, now)
            self.follower = Follower(time.monotonic) if role == STANDBY else None
            log.warning("pair: STANDBY (term %d): catching up from the active", self.roles.term)

    def _hand_over(self, pub: zmq.Socket, peer_in: zmq.Socket, peer_out: zmq.Socket) -> None:
        """A clean stop of the active with its standby in sync: publish what the standby acknowledges, then
        tell it to take over at once (no vote, no silence to wait for)."""
        replica, core = self.replica, self.core
        if self.roles.role != ACTIVE or replica is None or not replica.in_sync or core is None:
            return
        deadline = time.monotonic() + HANDOVER_WAIT
        while True:
            for frames in core.flush():
                _send_frames(pub, frames)
            outbox, replica.outbox = replica.outbox, []
            for frames in outbox:
                self._send_peer(peer_out, frames)
            done = replica.durable() >= replica.inner.durable()
            if done or not replica.in_sync or time.monotonic() > deadline:
                break
            if peer_in.poll(20):
                try:
                    kind, header, _bodies = decode(peer_in.recv_multipart())
                    if kind == b"ack":
                        replica.on_ack(header)
                except PeerError:
                    continue
        if done and replica.in_sync:
            self._send_peer(peer_out, encode(b"handover", {"p": replica.position, "t": self.roles.term}))
            log.warning("pair: handed over to the standby")

    def _standby_drain(self, pull: zmq.Socket, pub: zmq.Socket, now: float, curve: bool, by_address: bool) -> None:
        """Not active: a hello is a client's vote (taken over on, when the rules allow) or is told whom to
        reach; other messages from clients that think this server active are told the same, within a budget."""
        for _ in range(BATCH):
            try:
                key, address = None, ""
                if curve or by_address:
                    first = _raw_recv(pull, _NOBLOCK, False)
                    address = first.get("Peer-Address") if by_address else ""
                    key = first.get("User-Id") if curve else None
                    frames = _recv_message(pull, first)
                else:
                    frames = _recv_message(pull, _raw_recv(pull, _NOBLOCK, False))
            except zmq.Again:
                return
            if frames is None:
                continue
            try:
                msg = p.decode_client(frames)
            except p.ProtocolError:
                continue
            self.roles.in_sync = self.follower is not None and self.follower.streaming
            if isinstance(msg, p.Hello) and msg.vote and self.roles.vote(now):
                log.warning("pair: the active is silent on the link and a client cannot reach it either: "
                            "taking over")
                self._become(ACTIVE, now)
                assert self.core is not None
                if self.core.admit(key, address):
                    self.core.receive(frames, key, None, address, curve or by_address)
                return  # the rest is the new core's, next turn
            second, count = self._not_active
            if int(now) != second:
                second, count = int(now), 0
            if count >= NOT_ACTIVE_PER_SECOND:
                continue
            self._not_active = (second, count + 1)
            if isinstance(msg, (p.Hello, p.Ping, p.Say)):
                peer = self.roles.peer
                known = peer is not None and peer.role == ACTIVE and not self.roles.peer_silent(now)
                active = (peer.client or self.peer_client) if known else ""  # type: ignore[union-attr]
                _send_frames(pub, not_active(msg.session, getattr(msg, "rid", ""), self.roles.role, active,  # type: ignore[attr-defined]
                                             self.roles.term))

    def _log_notices(self) -> None:
        for source in (self.roles, self.replica):
            if source is not None and source.notices:
                for text in source.notices:
                    log.warning("pair: %s", text)
                source.notices.clear()


