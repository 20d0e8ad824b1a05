"""The client's rules, sans-IO: handshake, heartbeats, ordering per room, gap recovery, resend, and which
server of a hot-standby pair to talk to.

``ClientSession`` never touches a socket. The I/O shell (``zmqchat.client.sync``) feeds it the frames that
arrive on SUB (``receive``) and the passage of time (``tick``), and moves what it queues: frames for PUSH
(``outgoing``), topics to (un)subscribe (``subscriptions``) and events for the user (``events``). With
several servers (``servers``) the shell's SUB hears them all and its PUSH goes to ``servers[server]``: when
the session changes ``server`` (the active was lost, a standby named the active, another server took over)
the shell moves the PUSH. Every server message carries its server's term: a lower one than the highest
seen comes from a deposed active and is dropped.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import events as ev
from .. import protocol as p
from ..errors import ZmqchatError
from .servers import MAX_SERVERS, label, parse_server, same_server

HELLO_RETRY = 0.25  # seconds between hellos until the welcome arrives
LOST_HELLO_RETRY = 1.0  # seconds between hellos while the connection is lost
FAST_HELLOS_FOR = 1.0  # seconds of HELLO_RETRY hellos after moving to another server of a pair (its PUSH is new)
ROTATE_AFTER = 2.0  # seconds of unanswered hellos to one server of a pair before the next one is tried
RESEND_AFTER = 5.0  # seconds before an unacknowledged message is sent again
GAP_CHUNK = 200  # messages asked for per gap request: small enough to pass the server's PUB queue
HISTORY_RETRY = 3.0  # seconds before an unanswered history request is asked again
DEFAULT_HEARTBEAT = 1.0  # seconds, until the server's welcome says otherwise
LOST_AFTER_MISSES = 3  # server heartbeats missed before the connection counts as lost
FATAL_CODES = {p.ERR_NAME_TAKEN, p.ERR_BAD_NAME, p.ERR_NOT_AUTHORIZED}  # fatal only as answers to our hello
IGNORED: frozenset[type[p.Message]] = frozenset()  # server message kinds a client has no use for (none)
HELLO_NONCES = 64  # recent hello nonces still accepted in an answer (hellos repeat every HELLO_RETRY)
BUSY_GIVE_UP = 30.0  # seconds a request told "busy" keeps being asked again before the user hears of it
ASKED_MAX = 32  # user requests (who, rooms, stats, history) remembered for a retry after "busy"
REASKS = 3  # gap replies in a row whose rows were lost on the way and that delivered nothing: then given up


@dataclass
class RoomSync:
    """Ordering state of one joined room."""

    last: int = 0  # newest sequence number delivered
    synced: bool = False  # a history reply has told us where the room stands
    buffer: dict[int, tuple[p.RoomMessage, bool]] = field(default_factory=dict)  # seq -> (msg, is history)
    requested_at: float | None = None  # when the outstanding gap request was sent
    gap_after: int = -1  # the ``after`` of the outstanding gap request
    show_old: bool = False  # a /history display request is outstanding
    joined: bool = False  # the server has confirmed our join (we told the user)
    newest: int = 0  # the newest sequence number the server has told us of
    reasks: int = 0  # gap replies in a row that lost rows on the way and moved nothing forward
    rid: str = ""  # the request id of the outstanding join or gap request


@dataclass
class Pending:
    """A message we sent and the server has not echoed yet."""

    msg: p.Say
    sent_at: float
    not_before: float = 0.0

    @property
    def counter(self) -> int:
        return int(self.msg.mid.rpartition(".")[2])


class ClientSession:
    """One chat session's protocol state. Public methods queue frames; none blocks or raises for input
    from the server (bad frames are counted in ``bad_frames``)."""

    def __init__(self, name: str, rooms: list[str] | tuple[str, ...] = ("#general",),
                 clock: Callable[[], float] = time.monotonic, session_id: str | None = None,
                 wall_clock: Callable[[], float] = time.time, servers: list[str] | None = None,
                 discover: bool = True) -> None:
        """``servers``: the labels (``HOST:PORT``) of the servers to use, a pair's in any order; None or []
        for one server. ``discover``: a standby's answer naming an active not in ``servers`` adds it."""
        self.name = name
        self.servers: list[str] = list(servers or [])
        self.server = 0  # index in ``servers`` of the one our PUSH goes to (the shell follows it)
        self.discover = discover
        self.term = 0  # the highest server term seen: a message with a lower one is from a deposed active
        self.stale_frames = 0  # messages dropped for their lower term
        self.standbys: set[str] = set()  # servers that answered our hello as the standby, since the last welcome
        self.clock = clock
        self.clock_ts = wall_clock
        self.session_id = session_id or secrets.token_hex(8)
        self.session_topic = p.session_topic(self.session_id)
        self.rooms: dict[str, RoomSync] = {}
        self.current_room = rooms[0] if rooms else "#general"
        self.state = "new"  # new -> connecting -> connected <-> lost; closing; closed
        self.outgoing: list[list[bytes]] = []
        self.subscriptions: list[tuple[bool, bytes]] = []  # (subscribe?, topic)
        self.events: list[ev.Event] = []
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.parting: set[str] = set()  # rooms left by the user, kept until their messages come back
        self.heartbeat_interval = DEFAULT_HEARTBEAT
        self.max_text_bytes = p.DEFAULT_MAX_TEXT_BYTES
        self.max_message_bytes = p.DEFAULT_MAX_MESSAGE_BYTES
        self.epoch = ""  # the server history's epoch our sequence numbers belong to
        self.bad_frames = 0
        self._counter = 0
        self._last_heard = clock()
        self._last_sent = 0.0
        self._last_hello = float("-inf")
        self._was_connected = False
        self._throttled_until = float("-inf")
        self._stop_and_wait = False
        self._last_throttle_notice = float("-inf")
        self._hello_nonces: deque[str] = deque(maxlen=HELLO_NONCES)  # our hellos' rids, newest last
        self._hello_to: dict[str, int] = {}  # hello rid -> the server it went to
        self._server_term = 0  # the term of the server that welcomed us
        # Our hellos are a vote (Binary Star's) only once we lost the active or found a server dead: a client
        # that has just started and happens to ask the standby first must not make it take over.
        self._vote = False
        self._term_now = 0  # the term of the message being handled
        self._at_server_since = clock()  # when we began saying hello to ``server``
        self._told: set[tuple[str, str]] = set()  # (standby, active) notices given since the last welcome
        self._requests = 0  # counter behind the rid of every other request
        # rid -> [request, when first sent, when to ask again (None: not told busy)]: the user's requests
        self._asked: OrderedDict[str, list] = OrderedDict()
        self.foreign_replies = 0  # errors and welcomes that answered somebody else's request
        # room -> the /history and page requests in flight, in the order asked: [rid, rows] ([rid, None] for a
        # /history). Replies come in that order, so a replayed row belongs to the first one.
        self._browsing: dict[str, deque[list]] = {}
        self.topics: dict[str, ev.Topic] = {}  # room -> its topic, as the server last told us
        for room in rooms or [self.current_room]:
            self.rooms[room] = RoomSync()
        # One handler per server message kind; a test checks that every kind is here or in IGNORED.
        self._handlers: dict[type[p.Message], Callable[[p.Message], None]] = {
            p.Welcome: self._on_Welcome, p.RoomMessage: self._on_RoomMessage,
            p.HistoryMessage: self._on_HistoryMessage, p.HistoryEnd: self._on_HistoryEnd, p.Ack: self._on_Ack,
            p.PresenceEvent: self._on_PresenceEvent, p.WhoReply: self._on_WhoReply,
            p.RoomsReply: self._on_RoomsReply, p.StatsReply: self._on_StatsReply,
            p.ErrorReply: self._on_ErrorReply, p.Goodbye: self._on_Goodbye,
            p.ServerHeartbeat: self._on_ServerHeartbeat, p.Shutdown: self._on_Shutdown,
            p.PageEnd: self._on_PageEnd, p.SearchReply: self._on_SearchReply, p.Topic: self._on_Topic,
            p.RoomMessages: self._on_RoomMessages,
        }  # type: ignore[dict-item]

    # -- lifecycle

    def start(self) -> None:
        """Subscribe first (slow joiner), then say hello; hellos repeat in ``tick`` until welcomed."""
        self.subscriptions.append((True, self.session_topic))
        self.subscriptions.append((True, p.ALL_TOPIC))
        for room in self.rooms:
            self.subscriptions.append((True, p.room_topic(room)))
        self.state = "connecting"
        self._last_heard = self._at_server_since = self.clock()
        self._hello()

    def resume_from(self, rooms: dict[str, int], epoch: str, term: int = 0) -> None:
        """Before ``start``: begin where an earlier session of ours stood (a page that knew ``rooms``' last
        seqs in ``epoch``, under ``term``), so that the first hello asks for what came after, not a backlog.
        Rooms not among the session's are left alone."""
        if not epoch:
            return
        self.epoch = epoch
        self.term = max(self.term, term)  # a deposed active cannot win us back
        for room, seq in rooms.items():
            sync = self.rooms.get(room)
            if sync is not None and isinstance(seq, int) and seq >= 0:
                sync.last = sync.newest = seq
                sync.joined = True

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def _send(self, msg: p.Message) -> None:
        self.outgoing.append(p.encode_client(msg))
        self._last_sent = self.clock()

    def _hello(self) -> None:
        now = self.clock()
        for sync in self.rooms.values():
            sync.synced = False
            sync.requested_at = now  # the hello's history reply is due; asked again if it never comes
        # Every room the server confirmed gets a catch-up from where we are (0 included: a room joined
        # while empty); a room never confirmed gets the backlog.
        last = {room: s.last for room, s in self.rooms.items() if s.joined}
        nonce = secrets.token_hex(8)
        self._hello_nonces.append(nonce)
        self._hello_to[nonce] = self.server
        if len(self._hello_to) > 2 * HELLO_NONCES:
            self._hello_to = {n: self._hello_to[n] for n in self._hello_nonces if n in self._hello_to}
        first = next(iter(self.pending.values())).counter if self.pending else self._counter + 1
        self._send(p.Hello(session=self.session_id, name=self.name, rooms=list(self.rooms), last_seq=last,
                           epoch=self.epoch, rid=nonce, unacked=first, term=self.term, vote=self._vote))
        self._last_hello = self.clock()

    def _rid(self) -> str:
        self._requests += 1
        return f"r{self._requests}"

    def tick(self) -> None:
        """Timers: hello retries, heartbeats, loss detection, resends, unanswered history requests."""
        now = self.clock()
        if self.state in ("connecting", "lost"):
            if len(self.servers) > 1 and now - self._at_server_since >= ROTATE_AFTER:
                self._switch((self.server + 1) % len(self.servers))  # unanswered: never stick to a dead one
                self._vote = True  # that one is dead to us: the other may take over if it is a standby
                self._hello()
            elif now - self._last_hello >= self._hello_interval(now):
                self._hello()
            if self.state == "connecting":
                return
        if self.state not in ("connected", "closing"):
            return
        if now - self._last_heard > self.heartbeat_interval * LOST_AFTER_MISSES:
            self._lose()
            return
        if now - self._last_sent >= self.heartbeat_interval:
            self._send(p.Ping(session=self.session_id))
        for pend in self.pending.values():
            if now >= pend.not_before and now - pend.sent_at >= RESEND_AFTER:
                self._resend(pend, now)
            if self._stop_and_wait:
                break  # after a throttle: one message in flight at a time, in order
        for entry in self._asked.values():
            if entry[2] is not None and now >= entry[2]:
                entry[2] = None
                self._send(entry[0])
        for room, sync in self.rooms.items():
            if sync.requested_at is None or now - sync.requested_at < HISTORY_RETRY:
                continue
            if sync.synced:
                self._request_gap(room, sync, min(sync.buffer) if sync.buffer else sync.newest + 1)
            else:  # the reply to our join never came: ask again
                sync.requested_at = now
                sync.rid = self._rid()
                self._send(p.Join(session=self.session_id, room=room, last_seq=sync.last if sync.last else -1,
                                  rid=sync.rid))

    def _hello_interval(self, now: float) -> float:
        if self.state == "connecting":
            return HELLO_RETRY
        if len(self.servers) > 1 and now - self._at_server_since < FAST_HELLOS_FOR:
            return HELLO_RETRY  # a new PUSH drops what it is given before its connection is up
        return LOST_HELLO_RETRY

    def _resend(self, pend: Pending, now: float) -> None:
        pend.sent_at = now
        self._send(pend.msg)

    # -- which server

    @property
    def server_label(self) -> str:
        """The label of the server our PUSH goes to ("" with no labels)."""
        return self.servers[self.server] if self.server < len(self.servers) else ""

    def _switch(self, index: int) -> None:
        self.server = index
        self._at_server_since = self.clock()

    def _lose(self, hello: bool = True) -> None:
        """Our server is gone: with a pair, move to the next server and say hello there (that hello is the
        client's vote a standby needs before it takes over)."""
        self.state = "lost"
        self._vote = True  # a standby that cannot hear the active either may take over on our hello
        switching_to = ""
        if len(self.servers) > 1:
            self._switch((self.server + 1) % len(self.servers))
            switching_to = self.servers[self.server]
        else:
            self._at_server_since = self.clock()
        self.events.append(ev.ConnectionLost(switching_to=switching_to))
        if hello:
            self._hello()

    def switch_to(self, index: int) -> None:
        """Point the PUSH at ``servers[index]`` (the gateway's hub moves all its sessions together: they
        share one PUSH). A connected session counts its server as lost and says hello at the new one."""
        if not 0 <= index < max(1, len(self.servers)):
            raise ValueError(f"no server {index} (there are {len(self.servers)})")
        if index == self.server:
            return
        if self.state in ("connected", "closing"):
            self.state = "lost"
            self._vote = True
            self._switch(index)
            self.events.append(ev.ConnectionLost(switching_to=self.server_label))
            self._hello()
        elif self.state in ("connecting", "lost"):
            self._switch(index)
            self._hello()
        else:
            self._switch(index)

    def _server_index(self, address: str) -> int | None:
        """The index of the server ``address`` (HOST:PORT) names, added to ``servers`` if new and allowed;
        None if it cannot be used."""
        if not self.servers:
            return None  # our own server has no label: a list cannot be made around it
        for index, known in enumerate(self.servers):
            if same_server(known, address):
                return index
        if not self.discover or len(self.servers) >= MAX_SERVERS:
            return None
        try:
            host, port = parse_server(address)
        except ZmqchatError:
            return None  # garbage from a server: nothing to switch to
        self.servers.append(label(host, port))
        return len(self.servers) - 1

    # -- user actions

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        """Queue a chat message for ``room`` (default: the current room); returns its message id."""
        self._counter += 1
        mid = f"{self.session_id}.{self._counter}"
        msg = p.Say(session=self.session_id, room=room or self.current_room, text=text, mid=mid, action=action)
        now = self.clock()
        self.pending[mid] = Pending(msg, now, self._throttled_until)
        if self.state == "connected" and not self._stop_and_wait:
            self._send(msg)
        else:
            self.pending[mid].sent_at = float("-inf")  # tick() sends it when allowed
        return mid

    def message_state(self, mid: str) -> str:
        """What became of our message ``mid``: "sending" (sent or about to be, not yet echoed), "waiting"
        (held back after the server throttled us, to keep the order), or "" (echoed, refused, or unknown)."""
        pend = self.pending.get(mid)
        if pend is None:
            return ""
        return "waiting" if self._stop_and_wait or pend.not_before > self.clock() else "sending"

    def join(self, room: str) -> None:
        """Subscribe to ``room`` (before asking, so nothing published after the join is missed)."""
        self.current_room = room
        if room in self.rooms:
            self.parting.discard(room)  # back before the part went out: stay
            return
        self.rooms[room] = sync = RoomSync(requested_at=self.clock(), rid=self._rid())
        self.subscriptions.append((True, p.room_topic(room)))
        self._send(p.Join(session=self.session_id, room=room, rid=sync.rid))

    def part(self, room: str | None = None) -> str:
        """Leave ``room`` (default: the current one); returns the room left."""
        room = room or self.current_room
        if room in self.rooms and room not in self.parting:
            self.parting.add(room)
            self._finish_parts()  # at once, unless messages to the room still wait for their echo
        if room == self.current_room:
            self.current_room = next((r for r in self.rooms if r not in self.parting), "")
        return room

    def _finish_parts(self) -> None:
        """Leave the rooms being parted whose messages have all come back: leaving earlier would lose
        their echoes (so delivery could not be confirmed) or get queued ones refused as not_in_room."""
        waiting = {pend.msg.room for pend in self.pending.values()}
        for room in [r for r in self.parting if r not in waiting]:
            self.parting.discard(room)
            self.rooms.pop(room, None)
            self.subscriptions.append((False, p.room_topic(room)))
            self._send(p.Part(session=self.session_id, room=room, rid=self._rid()))

    def _ask(self, msg: p.Message) -> None:
        """Send a request the user is waiting for, remembered until answered so "busy" asks again."""
        self._asked[msg.rid] = [msg, self.clock(), None]  # type: ignore[attr-defined]
        while len(self._asked) > ASKED_MAX:
            self._asked.popitem(last=False)
        self._send(msg)

    def who(self, room: str = "") -> None:
        self._ask(p.WhoRequest(session=self.session_id, room=room, rid=self._rid()))

    def list_rooms(self) -> None:
        self._ask(p.RoomsRequest(session=self.session_id, rid=self._rid()))

    def stats(self) -> None:
        self._ask(p.StatsRequest(session=self.session_id, rid=self._rid()))

    def history(self, count: int = 20, room: str | None = None) -> None:
        """Ask to see the last ``count`` messages of ``room`` again."""
        room = room or self.current_room
        sync = self.rooms.get(room)
        if sync is not None:
            sync.show_old = True
        rid = self._rid()
        self._browse(room, rid, None)
        self._ask(p.HistoryRequest(session=self.session_id, room=room, after=0, before=0, limit=count, rid=rid))

    def page(self, room: str | None = None, before: int = 0, limit: int = 50) -> str:
        """Ask for the newest ``limit`` messages of ``room`` older than ``before`` (0: from the newest);
        they come as one ``ev.Page``. Returns the request id."""
        room = room or self.current_room
        rid = self._rid()
        self._browse(room, rid, [])
        self._ask(p.PageRequest(session=self.session_id, room=room, before=before, limit=limit, rid=rid))
        return rid

    def search(self, query: str, sender: str = "", room: str = "", limit: int = 20) -> str:
        """Search the server's stored messages; the answer comes as ``ev.SearchResults``."""
        rid = self._rid()
        self._ask(p.SearchRequest(session=self.session_id, query=query, sender=sender, room=room, limit=limit,
                                  rid=rid))
        return rid

    def set_topic(self, text: str, room: str | None = None) -> None:
        """Set (``text`` "": clear) the topic of ``room``; the server announces it as ``ev.Topic``."""
        self._ask(p.TopicRequest(session=self.session_id, room=room or self.current_room, text=text,
                                 rid=self._rid()))

    def _browse(self, room: str, rid: str, rows: list | None) -> None:
        queue = self._browsing.setdefault(room, deque())
        queue.append([rid, rows])
        while len(queue) > ASKED_MAX:
            queue.popleft()

    def bye(self) -> None:
        self.state = "closing"
        self._send(p.Bye(session=self.session_id, rid=self._rid()))

    # -- from the server

    def receive(self, frames: list[bytes]) -> None:
        """Handle one message from the SUB socket."""
        try:
            _topic, msg, term = p.decode_server_term(frames)
        except p.ProtocolError:
            self.bad_frames += 1
            return
        self.receive_message(msg, term)

    def receive_message(self, msg: p.Message, term: int = 0) -> None:
        """Handle one server message already decoded (a loop that decodes once for many sessions); ``term``
        is its server's, from the message's last frame."""
        if term < self.term:
            if not (type(msg) is p.Welcome and msg.rid in self._hello_nonces and (msg.epoch != self.epoch or term == 0)):
                self.stale_frames += 1  # a deposed active still publishing: nothing it says counts
                return
            # An answer to our own hello from another history (a pair set up anew) or from a single server
            # (term 0): terms count within one pair's history only, so this one starts ours over.
            self.term = term
        if type(msg) is p.ServerHeartbeat and msg.role == "standby":
            return  # a standby's beat proves nothing of the active: no liveness, its seqs are not ours
        if type(msg) is p.ErrorReply and msg.code == p.ERR_NOT_ACTIVE:
            self._on_not_active(msg)  # a standby's answer: neither liveness nor its term
            return
        self.term = max(self.term, term)
        self._term_now = term
        self._last_heard = self.clock()
        if self.state == "lost" and not isinstance(msg, (p.Welcome, p.ErrorReply)):
            # the server is back but does not know us yet: hello goes out from tick()
            return
        handler = self._handlers.get(type(msg))
        if handler is not None:  # None only for a kind in IGNORED
            handler(msg)

    def _on_Welcome(self, msg: p.Welcome) -> None:
        if self.state == "closing":
            return
        if msg.rid not in self._hello_nonces:
            self.foreign_replies += 1  # a welcome for somebody else's hello on our session topic
            return
        if self.state != "connected":
            sent_to = self._hello_to.get(msg.rid, self.server)
            if sent_to != self.server:
                self._switch(sent_to)  # the server an earlier hello went to is the active after all
            self._server_term = self._term_now
            self._vote = False
            self._told.clear()
            self.standbys.clear()
            self.heartbeat_interval = msg.heartbeat_interval
            self.max_text_bytes = msg.max_text_bytes
            self.max_message_bytes = msg.max_message_bytes
            if self.epoch and msg.epoch != self.epoch:
                # The server's history started over (e.g. --no-persist restart): our numbers mean nothing.
                for sync in self.rooms.values():
                    sync.last = sync.newest = 0
                    sync.buffer.clear()
                self.events.append(ev.Notice("the server's history was reset; earlier messages are gone"))
            self.epoch = msg.epoch
            # Answered: these nonces are public now (the welcome carried one), so none may count again.
            self._hello_nonces.clear()
            self._hello_to.clear()
            self.events.append(ev.Connected(msg.name, msg.motd, reconnected=self._was_connected))
            self.state = "connected"
            self._was_connected = True
            now = self.clock()
            for pend in self.pending.values():
                if now >= pend.not_before:
                    self._resend(pend, now)

    def _on_RoomMessage(self, msg: p.RoomMessage, history: bool = False) -> None:
        sync = self.rooms.get(msg.room)
        if sync is None:
            return
        if msg.sender == self.name:
            self._acked(msg.mid)
        if msg.seq <= sync.last:
            if history and sync.show_old:
                self.events.append(self._event(msg, True))
            return
        sync.buffer[msg.seq] = (msg, history)
        sync.newest = max(sync.newest, msg.seq)
        if sync.synced:
            self._flush(msg.room, sync)

    def _on_RoomMessages(self, msg: p.RoomMessages) -> None:
        for message in msg.messages:
            self._on_RoomMessage(message)

    def _on_HistoryMessage(self, msg: p.HistoryMessage) -> None:
        queue = self._browsing.get(msg.room)
        if queue and queue[0][1] is not None:  # a row of the page asked for first
            sync = self.rooms.get(msg.room)
            if sync is None or msg.seq <= sync.last:
                queue[0][1].append(msg)
                return
        self._on_RoomMessage(msg, history=True)

    def _done_browsing(self, room: str | None, rid: str) -> list | None:
        """The rows collected for request ``rid`` of ``room`` (None: whichever room it was for), now
        answered or refused (None if it was not a page)."""
        for name in [room] if room is not None else list(self._browsing):
            queue = self._browsing.get(name)  # type: ignore[arg-type]
            for entry in list(queue or ()):
                if entry[0] == rid:
                    queue.remove(entry)  # type: ignore[union-attr]
                    if not queue:
                        del self._browsing[name]  # type: ignore[arg-type]
                    return entry[1]
        return None

    def _on_PageEnd(self, msg: p.PageEnd) -> None:
        self._asked.pop(msg.rid, None)
        rows = self._done_browsing(msg.room, msg.rid) or []
        self.events.append(ev.Page(msg.room, msg.before, tuple(self._event(row, True) for row in rows
                                                              if msg.before <= 0 or row.seq < msg.before),
                                   msg.start, msg.rid))

    def _on_SearchReply(self, msg: p.SearchReply) -> None:
        if self._asked.pop(msg.rid, None) is None:
            return  # not ours (another session's topic) or answered already
        self.events.append(ev.SearchResults(msg.query, tuple(
            ev.Found(r["room"], r["seq"], float(r["ts"]), r["sender"], r["text"],
                     tuple((start, end) for start, end in r["marks"])) for r in msg.results), msg.more, msg.rid))

    def _on_Topic(self, msg: p.Topic) -> None:
        if msg.by == self.name:  # ours, set: a topic publication carries no rid, so the room says which
            for rid, asked in list(self._asked.items()):
                if isinstance(asked[0], p.TopicRequest) and asked[0].room == msg.room:
                    del self._asked[rid]
        topic = ev.Topic(msg.room, msg.text, msg.by, msg.ts)
        if self.topics.get(msg.room) == topic:
            return  # told again on a rejoin
        self.topics[msg.room] = topic
        self.events.append(topic)

    def _on_HistoryEnd(self, msg: p.HistoryEnd) -> None:
        self._asked.pop(msg.rid, None)
        if msg.rid:
            self._done_browsing(msg.room, msg.rid)
        sync = self.rooms.get(msg.room)
        if sync is None:
            return
        sync.show_old = False
        if sync.synced and (msg.before == 0 or msg.after != sync.gap_after):
            return  # a /history display reply (before = 0) or a stale one: nothing to reorder
        backlog = not sync.joined  # the reply to our first join is old talk; later ones are what we missed
        if not sync.joined:
            # Our own join, confirmed on our session topic: the room-topic notice may beat our subscription.
            sync.joined = True
            self.events.append(ev.Presence(msg.room, self.name, "join", self.clock_ts()))
        missing = lost = 0
        if sync.synced or msg.after > 0:  # a gap fill or a catch-up after reconnecting, not a backlog
            held = sum(1 for s in sync.buffer if sync.last < s <= msg.upto)
            if msg.after <= sync.last and held + (sync.last - msg.after) < msg.count and sync.reasks < REASKS:
                # The server sent more than reached us: its PUB dropped some on the way (our queue was
                # full). They are not gone: keep what continues the sequence and ask for the rest again
                # (given up after REASKS such replies in a row that moved nothing forward).
                last = sync.last
                sync.synced = True
                sync.requested_at = None
                sync.gap_after = -1
                sync.newest = max(sync.newest, msg.newest)
                self._flush(msg.room, sync)
                sync.reasks = 0 if sync.last > last else sync.reasks + 1
                return
            sync.reasks = 0
            missing = max(0, msg.upto - sync.last - held)
            for first, last in msg.lost:  # numbers the server skipped: never sent, or lost with its disk
                lost += max(0, min(last, msg.upto) - max(first, sync.last + 1) + 1)
                self.events.append(ev.Notice(f"{msg.room}: the server lost messages {first}-{last} (its disk lost its "
                                             "last writes, or a server was forced active without them); any of them "
                                             "you had not seen are gone"))
        for seq in sorted(s for s in sync.buffer if s <= msg.upto):
            message, history = sync.buffer.pop(seq)
            self.events.append(self._event(message, history and backlog))
        sync.last = max(sync.last, msg.upto)
        sync.newest = max(sync.newest, msg.newest)
        sync.synced = True
        sync.requested_at = None
        sync.gap_after = -1
        missing = max(0, missing - lost)
        if missing:
            self.events.append(ev.Notice(f"{missing} message(s) in {msg.room} are no longer in history"))
        self._flush(msg.room, sync)

    def _flush(self, room: str, sync: RoomSync) -> None:
        """Deliver buffered messages that continue the sequence; ask for the gap if one remains."""
        while sync.last + 1 in sync.buffer:
            sync.last += 1
            message, _ = sync.buffer.pop(sync.last)
            self.events.append(self._event(message, False))  # live, or recovered after a gap: both new
        if sync.requested_at is not None:
            return
        if sync.buffer:
            self._request_gap(room, sync, min(sync.buffer))
        elif sync.newest > sync.last:  # the tail of a burst never reached us
            self._request_gap(room, sync, sync.newest + 1)

    def _request_gap(self, room: str, sync: RoomSync, before: int) -> None:
        sync.requested_at = self.clock()
        sync.gap_after = sync.last
        sync.rid = self._rid()
        self._send(p.HistoryRequest(session=self.session_id, room=room, after=sync.last, before=before,
                                    limit=min(GAP_CHUNK, max(1, before - sync.last - 1)) if before else GAP_CHUNK,
                                    rid=sync.rid))

    def _event(self, msg: p.RoomMessage, history: bool) -> ev.Message:
        return ev.Message(room=msg.room, seq=msg.seq, ts=msg.ts, sender=msg.sender, text=msg.text,
                          action=msg.action, history=history, own=msg.sender == self.name, mid=msg.mid)

    def _on_Ack(self, msg: p.Ack) -> None:
        self._acked(msg.mid)

    def _acked(self, mid: str) -> None:
        if self.pending.pop(mid, None) is None:
            return
        if self.parting:
            self._finish_parts()
        if not self._stop_and_wait:
            return
        if not self.pending:
            self._stop_and_wait = False
            return
        pend = next(iter(self.pending.values()))
        now = self.clock()
        if now >= pend.not_before:
            self._resend(pend, now)

    def _on_PresenceEvent(self, msg: p.PresenceEvent) -> None:
        if msg.room in self.rooms and self.state == "connected" and msg.name != self.name:
            self.events.append(ev.Presence(msg.room, msg.name, msg.event, msg.ts))

    def _on_WhoReply(self, msg: p.WhoReply) -> None:
        self._asked.pop(msg.rid, None)
        self.events.append(ev.Who(msg.rooms))

    def _on_RoomsReply(self, msg: p.RoomsReply) -> None:
        self._asked.pop(msg.rid, None)
        self.events.append(ev.Rooms(msg.rooms))

    def _on_StatsReply(self, msg: p.StatsReply) -> None:
        self._asked.pop(msg.rid, None)
        self.events.append(ev.Stats(msg.stats))

    def _on_ErrorReply(self, msg: p.ErrorReply) -> None:
        ours = msg.rid in self._hello_nonces
        if msg.code == p.ERR_REVOKED:  # unsolicited by nature, and only ever sent to the revoked session
            self.events.append(ev.Error(msg.code, msg.message, fatal=True))
            return
        if msg.code in FATAL_CODES and not ours:
            self.foreign_replies += 1  # a refusal of somebody else's hello that named our session: not us
            return
        if msg.code == p.ERR_RESEND:
            self._resend_from(msg.resend_from)
            return
        if msg.code == p.ERR_UNKNOWN_SESSION:
            if self.state in ("connected", "lost"):
                self.state = "lost"
                self._hello()
            return
        asked = self._asked.get(msg.rid) if msg.rid else None
        if msg.code in (p.ERR_BUSY, p.ERR_RATE_LIMITED) and asked is not None:
            # put off (the server's work budget) or over our own request rate: asked again when allowed
            if self.clock() - asked[1] < BUSY_GIVE_UP:  # quietly, until it has taken too long
                asked[2] = self.clock() + msg.retry_after
                return
            del self._asked[msg.rid]
            self._done_browsing(None, msg.rid)
            self.events.append(ev.Error(msg.code, "the server is too busy to answer; try again later"
                                        if msg.code == p.ERR_BUSY else "asked too often; try again later"))
            return
        if msg.code in (p.ERR_RATE_LIMITED, p.ERR_BUSY) and not msg.mid:
            # A request (join, history, a hello's replay) was throttled or put off: ask again once allowed,
            # quietly; only for its room when the rid says which (a hello's: every room still waiting).
            retry_at = self.clock() + msg.retry_after
            mine = [sync for sync in self.rooms.values() if msg.rid and sync.rid == msg.rid]
            for sync in mine or self.rooms.values():
                if sync.requested_at is not None:
                    sync.requested_at = retry_at - HISTORY_RETRY
            return
        if msg.code == p.ERR_RATE_LIMITED and msg.mid in self.pending:
            # Hold this and every later message until the bucket refills, so order is kept.
            self._throttled_until = self.clock() + msg.retry_after
            self._stop_and_wait = True
            for pend in self.pending.values():
                pend.not_before = max(pend.not_before, self._throttled_until)
                pend.sent_at = float("-inf")
            self._rate_limited_notice(msg)
            return
        if msg.mid:
            self._acked(msg.mid)
        if msg.rid:
            self._asked.pop(msg.rid, None)
            self._done_browsing(None, msg.rid)  # a refused page or /history: its replies will not come
        fatal = msg.code in FATAL_CODES and self.state != "connected"  # and ``ours``, checked above
        self.events.append(ev.Error(msg.code, msg.message, fatal=fatal, mid=msg.mid))

    def _on_not_active(self, msg: p.ErrorReply) -> None:
        """A standby answered our hello: go to the active it names at once, else try the next server after
        the usual wait (the active may come back, or this standby take over on a later hello: our vote)."""
        sent_to = self._hello_to.get(msg.rid)
        if sent_to is None:
            self.foreign_replies += 1
            return
        if self.state not in ("connecting", "lost") or sent_to != self.server:
            return  # an answer to a hello from before we moved on
        standby = self.server_label or "the server"
        self.standbys.add(standby)
        target = self._server_index(msg.active) if msg.active else None
        if target is not None and target != sent_to:
            self._notice_once(standby, msg.active, f"{standby} is the standby; switching to {self.servers[target]}")
            self._switch(target)
            self._hello()
        elif msg.active and target is None:
            self._notice_once(standby, msg.active, f"{standby} is the standby; the active is {msg.active}, "
                              "which is not one of the servers given")
        elif not msg.active:
            more = "; trying the other server" if len(self.servers) == 2 else (
                "; trying the next server" if len(self.servers) > 2 else "; asking again")
            self._notice_once(standby, "", f"{standby} is the standby and does not know the active{more}")

    def _notice_once(self, standby: str, active: str, text: str) -> None:
        if (standby, active) not in self._told:  # a standby answers every hello: tell the user once
            self._told.add((standby, active))
            self.events.append(ev.Notice(text))

    def _resend_from(self, counter: int) -> None:
        """The server never got message ``counter``: send it and the later ones again, in order (one at a
        time under stop-and-wait)."""
        now = self.clock()
        for pend in self.pending.values():
            if pend.counter >= counter and now >= pend.not_before:
                self._resend(pend, now)
                if self._stop_and_wait:
                    break

    def _rate_limited_notice(self, msg: p.ErrorReply) -> None:
        # One notice per throttled burst, not one per message.
        now = self.clock()
        if now - self._last_throttle_notice > 2.0:
            self._last_throttle_notice = now
            self.events.append(ev.Notice(f"sending too fast; queued messages will follow ({msg.message})"))

    def _on_Goodbye(self, msg: p.Goodbye) -> None:
        if self.state != "closing":
            self.foreign_replies += 1  # the answer to a bye we never sent (somebody else's, in our session)
            return
        self.state = "closed"
        self.events.append(ev.Closed())

    def _on_ServerHeartbeat(self, msg: p.ServerHeartbeat) -> None:
        if (msg.role == "active" and self.state == "connected" and self._term_now > self._server_term
                and len(self.servers) > 1):
            self._lose()  # another server took over since our welcome: ours is deposed (two: the other one)
            return
        for room, newest in msg.seqs.items():
            sync = self.rooms.get(room)
            if sync is not None and isinstance(newest, int) and newest > sync.newest:
                sync.newest = newest
                if sync.synced:
                    self._flush(room, sync)

    def _on_Shutdown(self, msg: p.Shutdown) -> None:
        self.events.append(ev.ServerShutdown(msg.message))
        if self.state == "connected":
            self._lose(hello=len(self.servers) > 1)  # alone: hellos resume from tick(), as it comes back
