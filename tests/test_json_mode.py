"""``zmqchat-client --json`` through the real console script: every line parses, every event kind shows up."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import Proc, script

FIELDS = {  # the documented fields of each event type (docs/client.md)
    "connected": {"name", "motd", "reconnected"},
    "connection_lost": {"switching_to"},
    "message": {"room", "seq", "ts", "sender", "text", "action", "history", "own", "mid"},
    "presence": {"room", "name", "event", "ts"},
    "who": {"rooms"},
    "rooms": {"rooms"},
    "stats": {"stats"},
    "notice": {"text"},
    "error": {"code", "message", "fatal", "mid"},
    "shutdown": {"message"},
    "topic": {"room", "text", "by", "ts"},
    "search": {"query", "results", "more", "rid"},
    "page": {"room", "before", "messages", "start", "rid"},
}


def parsed(proc: Proc) -> list[dict]:
    """Every stdout line as JSON (fails on the first line that is not)."""
    events = []
    for line in proc.lines["out"]:
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not JSON: {line!r}")
    return events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def test_json_output_parses_and_covers_every_event_kind(chat):
    server = chat.server("--burst", "3")
    bob = chat.client("bob")
    bob.send("before alice")
    bob.expect("<bob> before alice$")
    alice = chat.client("alice", "--json")
    alice.expect('"text": "before alice"')  # the backlog of #general, replayed
    carol = chat.client("carol")
    alice.expect('"name": "carol", "event": "join"')
    bob.send("live one", "/me waves")
    alice.expect('"text": "waves"')
    alice.send("/who", "/rooms", "/stats")
    alice.expect('"type": "stats"')
    alice.send("mine")
    alice.expect('"sender": "alice", "text": "mine"')
    alice.send(*(f"quick {i}" for i in range(6)))  # more than the burst of 3: a notice, then all delivered
    alice.expect('"type": "notice"')
    alice.expect('"text": "quick 5"')
    carol.send("/quit")
    alice.expect('"name": "carol", "event": "quit"')
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    alice.expect('"type": "shutdown"')
    alice.expect('"type": "connection_lost"')
    chat.server("--burst", "3")
    alice.expect('"reconnected": true')
    alice.send("after restart")
    alice.expect('"text": "after restart"')
    alice.send("/search before alice")  # 3 of the 3 request tokens (--burst 3), then one more for the topic
    alice.expect('"type": "search"')
    alice.send("/topic the plan for today")
    alice.expect('"type": "topic"', timeout=20)
    alice.close_stdin()
    assert alice.wait() == 0

    events = parsed(alice)
    kinds = {e["type"] for e in events}
    # no CLI action makes the server send a non-fatal error; pages are asked for by scrolling back (full UI)
    assert set(FIELDS) - kinds == {"error", "page"}
    for event in events:
        assert set(event) == FIELDS[event["type"]] | {"type"}, event

    (topic,) = of_type(events, "topic")
    assert (topic["room"], topic["text"], topic["by"]) == ("#general", "the plan for today", "alice")
    (found,) = of_type(events, "search")
    assert [r["text"] for r in found["results"]] == ["before alice"] and found["results"][0]["marks"] == [[0, 6],
                                                                                                          [7, 12]]
    first, again = of_type(events, "connected")
    assert first["name"] == "alice" and not first["reconnected"] and first["motd"]
    assert again["reconnected"]
    messages = of_type(events, "message")
    old = next(m for m in messages if m["text"] == "before alice")
    assert old["history"] and not old["own"] and old["sender"] == "bob" and old["room"] == "#general"
    live = next(m for m in messages if m["text"] == "live one")
    assert not live["history"] and not live["action"] and live["seq"] > old["seq"] and live["ts"] >= old["ts"]
    assert next(m for m in messages if m["text"] == "waves")["action"]
    assert next(m for m in messages if m["text"] == "mine")["own"]
    assert [m["text"] for m in messages if m["text"].startswith("quick")] == [f"quick {i}" for i in range(6)]
    who = of_type(events, "who")[0]["rooms"]
    assert who == {"#general": ["alice", "bob", "carol"]}
    assert of_type(events, "rooms")[0]["rooms"] == {"#general": 3}
    assert isinstance(of_type(events, "stats")[0]["stats"], dict)
    assert "too fast" in of_type(events, "notice")[0]["text"]
    joins = [(e["name"], e["event"]) for e in of_type(events, "presence")]
    assert ("alice", "join") in joins and ("carol", "join") in joins and ("carol", "quit") in joins
    assert of_type(events, "shutdown")[0]["message"]


def test_json_mode_is_machine_readable_from_the_first_line(chat):
    chat.server()
    proc = Proc(script("zmqchat-client") + ["--name", "ci", "--port", str(chat.port), "--json"])
    chat.procs.append(proc)
    proc.send("hello")
    proc.close_stdin()
    assert proc.wait() == 0
    events = parsed(proc)
    assert events[0]["type"] == "connected"
    assert any(e["type"] == "message" and e["text"] == "hello" and e["own"] for e in events)


def test_json_mode_reports_local_hints_as_json(chat):
    chat.server()
    alice = chat.client("alice", "--json")
    alice.send("/bogus", "/join bad!room", "/help", "done")
    alice.expect('"text": "done"')
    alice.close_stdin()
    assert alice.wait() == 1  # a refused line (the bad room) makes a pipe fail
    events = parsed(alice)
    assert any(e["type"] == "notice" and "unknown command /bogus" in e["text"] for e in events)
    assert any(e["type"] == "notice" and "/join #room" in e["text"] for e in events)  # the /help text
    assert any(e["type"] == "error" and e["code"] == "local" and "invalid room" in e["message"] for e in events)
