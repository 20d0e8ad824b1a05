"""The bot API in this process, and the ready bots in scripts/ as subprocesses, against a real server."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest
from conftest import WAIT, Proc

from zmqchat import events as ev
from zmqchat.bot import Bot
from zmqchat.errors import ConnectError

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
# The bot shares the test's thread and is deaf while the test waits on another process: slow heartbeats.
PATIENT = ["--heartbeat-interval", "1", "--heartbeat-misses", "30"]


def run_script(chat, name: str, *args: str, env: dict[str, str] | None = None, stdin: bool = True) -> Proc:
    proc = Proc([sys.executable, str(SCRIPTS / name), "--port", str(chat.port), *args], env=env, stdin=stdin)
    chat.procs.append(proc)
    return proc


# -- the API


def test_commands_messages_and_what_a_bot_ignores(chat):
    chat.server(*PATIENT)
    alice = chat.client("alice")
    alice.send("said before the bot came")
    alice.expect("<alice> said before the bot came$")
    seen: list[ev.Event] = []
    heard: list[str] = []
    pings: list[str] = []
    bot = Bot("pingbot", port=chat.port)

    @bot.on_event
    def record(bot: Bot, event: ev.Event) -> None:
        seen.append(event)

    @bot.command("!ping")
    def ping(bot: Bot, message: ev.Message, args: str) -> str:
        pings.append(args)
        return f"pong {args}"

    @bot.command("!boom")
    def boom(bot: Bot, message: ev.Message, args: str) -> None:
        raise RuntimeError("a bug in a handler")

    @bot.on_message
    def listen(bot: Bot, message: ev.Message) -> None:
        heard.append(message.text)
        if message.text == "last":
            bot.stop()

    with bot:
        alice.expect("-- pingbot joined")
        alice.send("!PING hello there", "!boom", "just chatting", "last")
        assert bot.run(timeout=WAIT) == 0
    alice.expect("<pingbot> pong hello there$")
    alice.expect("-- pingbot left$")
    assert pings == ["hello there"]
    assert heard == ["just chatting", "last"]  # no command, no history, not its own "pong"
    old = [e for e in seen if isinstance(e, ev.Message) and e.text == "said before the bot came"]
    assert old and old[0].history  # it was there, for on_event, flagged as history


def test_history_and_own_messages_on_request(chat):
    chat.server(*PATIENT)
    alice = chat.client("alice")
    alice.send("old news")
    alice.expect("<alice> old news$")
    heard: list[tuple[str, bool, bool]] = []
    bot = Bot("archivist", port=chat.port, ignore_own=False, ignore_history=False)

    @bot.on_message
    def listen(bot: Bot, message: ev.Message) -> None:
        heard.append((message.text, message.history, message.own))
        if message.text == "noted":
            bot.stop()
        elif not message.own:
            bot.reply(message, "noted")

    assert bot.run(timeout=WAIT) == 0
    assert heard == [("old news", True, False), ("noted", False, True)]
    alice.expect("<archivist> noted$")
    alice.expect("-- archivist left$")


def test_iterating_events_as_a_context_manager(chat):
    chat.server(*PATIENT)
    with Bot("looper", port=chat.port, rooms=["#ops"]) as bot:
        bot.say("hello ops")
        echoed = next(e for e in bot.events(timeout=WAIT) if isinstance(e, ev.Message))
        assert (echoed.room, echoed.text, echoed.own) == ("#ops", "hello ops", True)
        bot.join("#dev")
        bot.say("in dev now")
        echoed = next(e for e in bot.events(timeout=WAIT) if isinstance(e, ev.Message))
        assert (echoed.room, echoed.text) == ("#dev", "in dev now")
    assert bot.close()  # already closed: nothing to do


def test_run_returns_after_its_timeout_still_connected(chat):
    chat.server(*PATIENT)
    with Bot("idler", port=chat.port) as bot:
        assert bot.run(timeout=0.2) == 0
        assert bot.client.connected
        bot.say("still here")
        assert bot.client.drain(WAIT)


def test_a_taken_name_is_a_connect_error(chat):
    chat.server(*PATIENT)
    chat.client("alice")
    with pytest.raises(ConnectError, match="already taken"):
        Bot("alice", port=chat.port).connect()


def test_a_failing_handler_is_logged(chat, caplog):
    chat.server(*PATIENT)
    bot = Bot("fragile", port=chat.port)

    @bot.on_event
    def explode(bot: Bot, event: ev.Event) -> None:
        bot.stop()
        raise ValueError("oops")

    with caplog.at_level(logging.ERROR, logger="zmqchat.bot"):
        assert bot.run(timeout=WAIT) == 0
    assert "handler explode failed" in caplog.text and "ValueError: oops" in caplog.text


def test_old_talk_is_ignored_and_recovered_messages_are_handled():
    # The session marks only old talk as history (a join's backlog, /history); messages recovered after
    # a gap or a reconnect arrive unmarked, because they are new to the bot.
    heard: list[str] = []
    bot = Bot("bot", client=object())  # dispatch alone needs no connection

    @bot.on_message
    def listen(bot: Bot, message: ev.Message) -> None:
        heard.append(message.text)

    def said(seq: int, text: str, history: bool, room: str = "#a") -> ev.Message:
        return ev.Message(room, seq, 0.0, "alice", text, history=history)

    for event in [ev.Connected("bot", ""), ev.Presence("#a", "bot", "join", 0.0), said(1, "backlog", True),
                  said(2, "backlog", True), said(3, "live 3", False), said(4, "gap filled 4", False),
                  said(5, "live 5", False), said(2, "/history answer", True), ev.ConnectionLost(),
                  ev.Connected("bot", "", reconnected=True), said(6, "missed while away 6", False),
                  said(7, "live 7", False), ev.Presence("#b", "bot", "join", 0.0), said(9, "backlog", True, "#b"),
                  said(10, "live 10", False, "#b")]:
        bot.dispatch(event)
    assert heard == ["live 3", "gap filled 4", "live 5", "missed while away 6", "live 7", "live 10"]


# -- the scripts


@pytest.mark.parametrize("name", ["echo_bot.py", "announce.py", "relay_bot.py"])
def test_script_help_lists_the_connection_flags(name):
    proc = Proc([sys.executable, str(SCRIPTS / name), "--help"], stdin=False)
    assert proc.wait() == 0
    for flag in ("--name", "--host", "--port", "--in-endpoint", "--out-endpoint", "--curve-secret",
                 "--server-key", "ZMQCHAT_"):
        proc.expect(flag)


def test_echo_bot_answers_mentions_and_leaves_on_ctrl_c(chat):
    chat.server()
    alice = chat.client("alice")
    echo = run_script(chat, "echo_bot.py", stdin=False)
    echo.expect("echo: connected", stream="err")
    alice.expect("-- echo joined")
    alice.send("@echo hello there", "not for the bot", "echo: second one", "!ping", "@echo")
    alice.expect("<echo> alice said: hello there$")
    alice.expect("<echo> alice said: second one$")
    alice.expect("<echo> pong$")
    alice.expect("<echo> alice: yes\\?$")
    assert alice.count("<echo>") == 4  # nothing for the line without a mention
    echo.signal(signal.SIGINT)
    assert echo.wait() == 0
    alice.expect("-- echo left$")


def test_echo_bot_takes_its_settings_from_the_environment(chat):
    chat.server()
    alice = chat.client("alice")
    env = {"ZMQCHAT_PORT": str(chat.port), "ZMQCHAT_NAME": "parrot", "ZMQCHAT_ROOM": "#birds"}
    bot = Proc([sys.executable, str(SCRIPTS / "echo_bot.py")], env=env, stdin=False)
    chat.procs.append(bot)
    bot.expect("parrot: connected", stream="err")
    alice.send("/join #birds")
    alice.expect("#birds -- alice joined")
    alice.send("@parrot polly")
    alice.expect("#birds <parrot> alice said: polly$")
    bot.signal(signal.SIGTERM)
    assert bot.wait() == 0


def test_announce_arguments_and_stdin(chat):
    chat.server()
    reader = chat.client("reader", "--room", "#builds")
    once = run_script(chat, "announce.py", "--room", "#builds", "build", "1234", "passed", stdin=False)
    assert once.wait() == 0, once.lines["err"]
    reader.expect("#builds <announce> build 1234 passed$")
    piped = run_script(chat, "announce.py", "--name", "ci", "--room", "builds")
    piped.send("first", "", "second ✓", "third")
    piped.close_stdin()
    assert piped.wait() == 0, piped.lines["err"]
    reader.expect("<ci> third$")
    got = [line.split("<ci> ", 1)[1] for line in reader.lines["out"] if "<ci> " in line]
    assert got == ["first", "second ✓", "third"]


def test_announce_fails_clearly_without_a_server(chat):
    proc = run_script(chat, "announce.py", "--connect-timeout", "0.5", "hello", stdin=False)
    assert proc.wait() == 1
    proc.expect("^ERROR: no answer from a zmqchat server", stream="err")


def test_announce_fails_clearly_when_delivery_times_out(chat):
    chat.server("--rate", "0.2", "--burst", "1")  # the second line may go 5 s after the first
    proc = run_script(chat, "announce.py", "--timeout", "1")
    proc.send("one", "two", "three")
    proc.close_stdin()
    assert proc.wait() == 1
    proc.expect(r"^ERROR: the server did not confirm 2 of 3 message\(s\) within 1s", stream="err")


def test_announce_refuses_an_empty_input(chat):
    proc = run_script(chat, "announce.py")
    proc.close_stdin()
    assert proc.wait() == 1
    proc.expect("^ERROR: nothing to announce", stream="err")


def test_relay_bot_copies_both_ways_without_echoes(chat):
    chat.server()
    alice = chat.client("alice")  # #general
    bob = chat.client("bob", "--room", "#dev")
    relay = run_script(chat, "relay_bot.py", "--room", "#dev", "--to", "#general", "--ignore", "deploybot",
                       stdin=False)
    relay.expect("relay: connected", stream="err")
    alice.expect("#general -- relay joined")
    bob.expect("#dev -- relay joined")
    bob.send("deploy done", "/me cheers")
    alice.expect(r"#general <relay> \[#dev\] <bob> deploy done$")
    alice.expect(r"#general <relay> \[#dev\] \* bob cheers$")
    alice.send("thanks bob")
    bob.expect(r"#dev <relay> \[#general\] <alice> thanks bob$")
    ignored = chat.client("deploybot", "--room", "#dev")
    ignored.send("not relayed")
    ignored.expect("<deploybot> not relayed$")
    bob.send("marker")
    alice.expect(r"<bob> marker$")
    assert alice.count("<relay>") == 3 and bob.count("<relay>") == 1  # nothing relayed back, nor ignored
    relay.signal(signal.SIGTERM)
    assert relay.wait() == 0
    alice.expect("-- relay left$")


def test_the_ten_line_bot_in_the_docs_works(chat, tmp_path):
    docs = (SCRIPTS.parent / "docs" / "bots.md").read_text()
    example = docs.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in example.splitlines() if line.strip()]) <= 12
    (tmp_path / "pingbot.py").write_text(example)
    chat.server()
    alice = chat.client("alice")
    bot = Proc([sys.executable, str(tmp_path / "pingbot.py"), "--port", str(chat.port)], stdin=False)
    chat.procs.append(bot)
    alice.expect("-- pingbot joined")
    alice.send("!ping")
    alice.expect("<pingbot> pong, alice$")
    chat.client("carol")
    alice.expect("<pingbot> welcome, carol!$")
    bot.signal(signal.SIGINT)
    assert bot.wait() == 0
    alice.expect("-- pingbot left$")


def test_relay_bot_refuses_one_room(chat):
    proc = run_script(chat, "relay_bot.py", "--room", "#a", "--to", "a", stdin=False)
    assert proc.wait() == 2
    proc.expect("must be different rooms", stream="err")
