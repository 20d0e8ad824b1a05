"""Bots: callbacks on top of ``Client``. Everything a bot does happens on the thread that runs it.

::

    from zmqchat.bot import Bot

    bot = Bot("pingbot", port=4444)

    @bot.command("!ping")
    def ping(bot, event, args):
        return "pong " + args          # a returned string is the reply, in the same room

    bot.run()                           # until Ctrl-C (or SIGTERM): then it leaves cleanly

By default a bot's commands and ``on_message`` see neither its own messages nor replays (``ignore_own``,
``ignore_history``): the backlog of a room it joins and ``/history`` answers. So it never answers itself, and
never answers old messages again after a restart. Messages it missed while the connection was down, or lost
to a full queue, are recovered from history but are not marked as history: the bot handles those.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import events as ev
from .client.sync import Client
from .errors import ConnectError

log = logging.getLogger("zmqchat.bot")

MessageHandler = Callable[["Bot", ev.Message], None]
EventHandler = Callable[["Bot", ev.Event], None]
CommandHandler = Callable[["Bot", ev.Message, str], str | None]

POLL_SLICE = 1.0  # seconds: the longest run() waits in one poll, so stop() and timeouts are noticed
DRAIN_ON_CLOSE = 5.0  # seconds close() waits for the server to confirm what the bot sent


class Bot:
    """A chat bot. Register handlers with the decorators, then ``run()`` (or iterate ``events()``).

    Keyword arguments not listed are ``Client`` arguments (host, port, curve_secret, server_key, …);
    or pass a connected ``client``. ``connect()`` raises ConnectError when the server cannot be reached.
    """

    def __init__(self, name: str, *, rooms: list[str] | tuple[str, ...] = ("#general",),
                 client: Client | None = None, ignore_own: bool = True, ignore_history: bool = True,
                 **client_options: Any) -> None:
        self.name = name
        self.rooms = list(rooms)
        self.ignore_own = ignore_own
        self.ignore_history = ignore_history
        self._client = client
        self._client_options = client_options
        self._on_message: list[MessageHandler] = []
        self._on_event: list[EventHandler] = []
        self._commands: dict[str, CommandHandler] = {}
        self._stopping = False

    # -- registration

    def on_message(self, func: MessageHandler) -> MessageHandler:
        """Decorator: ``func(bot, message)`` for every live message from others that no command took."""
        self._on_message.append(func)
        return func

    def on_event(self, func: EventHandler) -> EventHandler:
        """Decorator: ``func(bot, event)`` for every event (presence, notices, connection state, …)."""
        self._on_event.append(func)
        return func

    def command(self, word: str) -> Callable[[CommandHandler], CommandHandler]:
        """Decorator: ``func(bot, message, args)`` when a message starts with ``word`` (any case); a
        returned string is sent back to the message's room."""
        def register(func: CommandHandler) -> CommandHandler:
            self._commands[word.lower()] = func
            return func
        return register

    # -- connection

    @property
    def client(self) -> Client:
        """The underlying Client, connected on first use."""
        if self._client is None:
            self._client = Client(self.name, rooms=self.rooms, **self._client_options)
        return self._client

    def connect(self) -> Bot:
        self.client  # noqa: B018 - connects
        return self

    def close(self, drain_timeout: float = DRAIN_ON_CLOSE) -> bool:
        """Wait up to ``drain_timeout`` seconds for what we sent to be confirmed, then leave. False if some
        message was not confirmed."""
        if self._client is None:
            return True
        client, self._client = self._client, None
        delivered = True
        try:
            delivered = client.drain(drain_timeout)
        finally:
            client.close()
        return delivered

    def __enter__(self) -> Bot:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- actions

    def say(self, text: str, room: str | None = None, action: bool = False) -> str:
        """Send ``text`` to ``room`` (default: the bot's current room); returns the message id."""
        return self.client.say(text, room, action)

    def reply(self, message: ev.Message, text: str) -> str:
        """Answer in the room ``message`` came from."""
        return self.client.say(text, message.room)

    def join(self, room: str) -> str:
        return self.client.join(room)

    def part(self, room: str | None = None) -> str:
        return self.client.part(room)

    def stop(self) -> None:
        """From a handler: end ``run()``, which then leaves the chat."""
        self._stopping = True

    # -- receiving

    def events(self, timeout: float | None = None) -> Iterator[ev.Event]:
        """Every event as it comes, for bots that would rather loop than register handlers."""
        return self.client.events(timeout)

    def run(self, timeout: float | None = None) -> int:
        """Dispatch events to the handlers. After ``timeout`` seconds, return 0 still connected (call run
        again to go on); after ``stop()``, Ctrl-C or SIGTERM, leave cleanly and return 0. A fatal error
        (e.g. the name is taken after a reconnect) closes the bot and raises ConnectError."""
        client = self.client
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stopping = False
        try:
            with _sigterm_as_interrupt():
                while not self._stopping:
                    remaining = POLL_SLICE if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return 0
                    found, _ = client.poll(min(remaining, POLL_SLICE))
                    for event in found:
                        self.dispatch(event)
        except KeyboardInterrupt:
            log.info("%s: interrupted, leaving", self.name)
        self.close()
        return 0

    def dispatch(self, event: ev.Event) -> None:
        """Hand one event to the handlers that want it. A handler's exception is logged, not raised."""
        if isinstance(event, ev.Error) and event.fatal:
            self.close(drain_timeout=0)
            raise ConnectError(event.message)
        _log_state(self.name, event)
        for handler in self._on_event:
            self._call(handler, event)
        if not isinstance(event, ev.Message):
            return
        # ``history`` marks old talk only (a join's backlog, /history); recovered messages are new
        if (event.own and self.ignore_own) or (event.history and self.ignore_history):
            return
        word, _, args = event.text.strip().partition(" ")
        command = self._commands.get(word.lower())
        if command is not None:
            answer = self._call(command, event, args.strip())
            if isinstance(answer, str) and answer:
                self.reply(event, answer)
            return
        for handler in self._on_message:
            self._call(handler, event)

    def _call(self, handler: Callable[..., Any], *args: Any) -> Any:
        try:
            return handler(self, *args)
        except Exception:  # a bug in one handler must not take the bot down
            log.exception("%s: handler %s failed", self.name, getattr(handler, "__name__", handler))
            return None


def _log_state(name: str, event: ev.Event) -> None:
    if isinstance(event, ev.Connected):
        log.info("%s: %s", name, "reconnected" if event.reconnected else "connected")
    elif isinstance(event, ev.ConnectionLost):
        log.warning("%s: connection lost, %s", name,
                    f"switching to {event.switching_to}" if event.switching_to else "retrying")
    elif isinstance(event, ev.Error):
        log.warning("%s: server said: %s", name, event.message)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd, docker stop, kill) leaves as cleanly as Ctrl-C, where signals can be handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
