"""The full-screen client's state (zmqchat.tui.state) without a terminal, a server or a clock of its own;
and its rendering (zmqchat.tui.render) to rich segments, which needs no terminal either."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from conftest import FakeClock
from rich.console import Console

from zmqchat import events as ev
from zmqchat.client.commands import WORDS
from zmqchat.tui import render
from zmqchat.tui import state as st
from zmqchat.tui.state import AROUND, LIMIT, MAX_LINES, PAGE_SIZE, ChatState, Completer, Deco, InputHistory, Line

T0 = 1_767_268_800.0  # 2026-01-01 12:00:00 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def chat(clock: FakeClock | None = None, rooms=("#general", "#dev")) -> ChatState:
    state = ChatState("alice", "tcp://127.0.0.1:4444", clock=clock or FakeClock(), wall_clock=lambda: T0)
    state.sync_rooms(list(rooms), rooms[0])
    return state


def msg(seq: int, text: str = "", sender: str = "bob", room: str = "#general", **kw) -> ev.Message:
    return ev.Message(room, seq, T0 + seq, sender, text or f"message {seq}", **kw)


def seqs(state: ChatState, room: str = "#general") -> list[int]:
    return [line.seq for line in state.rooms[room].window.lines if line.seq]


def kinds(rows) -> list[str]:
    return [row.kind for row in rows]


# -- rooms, counts, the marker


def test_unread_and_mention_counts_rise_in_other_rooms_and_clear_on_view():
    state = chat()
    effects = state.apply([msg(1, room="#dev"), msg(2, "@alice look", room="#dev"), msg(3, "alice: you too", room="#dev")])
    dev = state.rooms["#dev"]
    assert (dev.unread, dev.mentions) == (3, 2) and effects.bell
    effects = state.apply([msg(1, "@alice here", room="#general"), msg(4, "mine", sender="alice", own=True, room="#dev"),
                           msg(5, "@alice old", room="#dev", history=True)])
    assert (dev.unread, dev.mentions) == (3, 2)  # own and replayed lines do not count
    general = state.rooms["#general"]
    assert (general.unread, general.mentions) == (0, 0) and effects.bell  # the room on screen rings, not counts
    assert not state.apply([msg(2, "alicefoo: not you")]).bell
    state.switch("#dev")
    assert (dev.unread, dev.mentions) == (0, 0) and state.current == "#dev"


def test_room_order_switching_and_leaving():
    state = chat(rooms=("#a", "#b", "#c"))
    assert state.room_at(1) == "#b" and state.room_at(5) is None
    assert state.neighbour(1) == "#b" and state.neighbour(-1) == "#c"
    state.sync_rooms(["#a", "#c"], "#c")  # parted #b; the client made #c current
    assert list(state.rooms) == ["#a", "#c"] and state.current == "#c"
    state.sync_rooms([], "")
    state.note("-- you left #c")
    assert state.current_view is state.lobby and state.lobby.window.lines[-1].text == "-- you left #c"


def test_the_new_messages_marker_sits_where_we_stopped_reading():
    state = chat()
    state.apply([msg(1), msg(2)])
    state.switch("#dev")
    general = state.rooms["#general"]
    assert general.marker is general.window.lines[-1]
    state.switch("#general")
    assert "marker" not in kinds(general.rows())  # nobody wrote since: no marker
    state.switch("#dev")
    state.apply([msg(3, "while away")])
    state.switch("#general")
    rows = general.rows()
    at = kinds(rows).index("marker")
    assert rows[at - 1].seq == 2 and rows[at + 1].seq == 3
    state.sent("#general", "m.1", "back")
    assert "marker" not in kinds(general.rows())  # we answered: read


def test_day_separators_come_with_the_messages_of_a_new_day():
    state = chat()
    state.apply([ev.Message("#general", 1, T0 - 86_400, "bob", "yesterday"), msg(2), msg(3)])
    rows = state.rooms["#general"].rows()
    days = [row.text for row in rows if isinstance(row, Deco) and row.kind == "day"]
    assert days == ["Wednesday 31 December 2025", "Thursday 01 January 2026"]


# -- our own messages


def test_own_message_sending_waiting_sent_with_latency_and_failed():
    clock = FakeClock()
    state = chat(clock)
    line = state.sent("#general", "s.1", "hello")
    assert line.state == "sending" and state.status().sending == 1
    state.refresh_states(lambda mid: "waiting")
    assert line.state == "waiting"
    clock.advance(0.042)
    state.apply([msg(7, "hello", sender="alice", own=True, mid="s.1")])
    assert (line.state, line.seq) == ("", 7) and state.pending == {}
    assert state.status().latency_ms == 42
    assert seqs(state) == [7]  # the echo turned our line normal: no second copy
    failed = state.sent("#general", "s.2", "   ")
    state.apply([ev.Error("empty", "empty message", mid="s.2")])
    assert (failed.state, failed.reason) == ("failed", "empty message")
    local = state.refused("#general", "x" * 99, "message too long (99 bytes, at most 10)")
    assert local.state == "failed" and local in state.rooms["#general"].window.lines
    assert state.apply([ev.Error("bad_room", "no such room")]) is not None
    assert state.rooms["#general"].window.lines[-1].text == "ERROR: no such room"


def test_a_fatal_error_asks_to_leave():
    assert chat().apply([ev.Error("name_taken", "taken", fatal=True)]).fatal == "taken"


# -- scrollback


def test_page_up_asks_for_older_pages_until_the_start():
    state = chat()
    state.apply([msg(seq) for seq in range(231, 251)])
    view = state.rooms["#general"]
    ask = state.want_older()
    assert (ask.room, ask.before, ask.limit, ask.kind) == ("#general", 231, PAGE_SIZE, "older")
    assert state.want_older() is None  # one page in flight at a time
    assert view.rows()[0] == Deco("loading", "loading…")
    page = tuple(msg(seq, history=True) for seq in range(131, 231))
    state.apply([ev.Page("#general", 231, page, start=False)])
    assert seqs(state) == list(range(131, 251)) and view.paging is None
    assert view.rows()[0].kind == "more"
    ask = state.want_older()
    state.apply([ev.Page("#general", ask.before, tuple(msg(seq, history=True) for seq in range(1, 131)), start=True)])
    assert view.window.at_start and view.rows()[0] == Deco("start", "the start of #general")
    assert state.want_older() is None
    assert seqs(state) == list(range(1, 251))
    assert all(line.history for line in view.window.lines if line.seq < 231)


def test_an_answer_to_another_page_leaves_ours_in_flight():
    state = chat()
    state.apply([msg(seq) for seq in range(50, 60)])
    state.want_older()
    state.apply([ev.Page("#general", 999, (msg(10),), start=False)])
    assert state.rooms["#general"].paging is not None


def test_memory_per_room_is_bounded_and_older_lines_are_fetched_again():
    state = chat()
    state.apply([msg(seq) for seq in range(1, LIMIT + 2)])
    view = state.rooms["#general"]
    assert len(view.window) == MAX_LINES and not view.window.at_start
    assert view.window.oldest_seq == LIMIT + 2 - MAX_LINES
    assert state.want_older().before == LIMIT + 2 - MAX_LINES


def test_paging_far_back_keeps_the_live_end_apart_and_both_bounded():
    state = chat()
    newest = 20_000
    state.apply([msg(seq) for seq in range(newest - MAX_LINES + 1, newest + 1)])
    view = state.rooms["#general"]
    for _ in range(6):  # 6 pages of 100: over LIMIT
        ask = state.want_older()
        state.apply([ev.Page("#general", ask.before, tuple(msg(s, history=True)
                                                         for s in range(ask.before - PAGE_SIZE, ask.before)))])
    assert view.detached and len(view.window) <= LIMIT and len(view.tail) <= LIMIT
    state.apply([msg(newest + 1, "live")])  # goes to the live end, not into the old talk on screen
    assert view.tail.lines[-1].text == "live" and view.window.newest_seq < newest
    assert kinds(view.rows())[-1] == "detached"
    state.back_to_present()
    assert not view.detached and view.window.lines[-1].text == "live"


def test_jump_to_a_search_result_fetches_around_it_and_pages_back_to_the_present():
    state = chat()
    state.apply([msg(seq, room="#dev") for seq in range(981, 1001)])
    ask = state.jump("#dev", 500)
    assert state.current == "#dev"
    assert (ask.room, ask.before, ask.limit, ask.kind) == ("#dev", 500 + AROUND + 1, 2 * AROUND + 1, "around")
    view = state.rooms["#dev"]
    assert view.detached and view.highlight == 500 and view.rows()[0].kind == "loading"
    state.apply([ev.Page("#dev", ask.before, tuple(msg(s, room="#dev", history=True)
                                                   for s in range(500 - AROUND, 500 + AROUND + 1)))])
    assert seqs(state, "#dev") == list(range(500 - AROUND, 500 + AROUND + 1)) and view.detached
    steps = 0
    while view.detached:
        ask = state.want_newer("#dev")
        newest = view.window.newest_seq
        rows = tuple(msg(s, room="#dev", history=True) for s in range(newest + 1, min(ask.before, 1001)))
        state.apply([ev.Page("#dev", ask.before, rows)])
        steps += 1
        assert steps < 10
    assert seqs(state, "#dev") == list(range(500 - AROUND, 1001))  # joined the live end, no gap, no copy
    assert state.jump("#dev", 990) is None and view.highlight == 990  # held already: no request


def test_new_messages_while_detached_join_the_window_when_it_reaches_the_present():
    state = chat()
    state.apply([msg(seq) for seq in range(50, 61)])
    ask = state.jump("#general", 45)
    view = state.rooms["#general"]
    assert view.detached
    state.apply([ev.Page("#general", ask.before, tuple(msg(s, history=True) for s in range(20, 61)))])
    assert not view.detached  # the page reached the live end
    state.apply([msg(61)])
    assert seqs(state) == list(range(20, 62))


def test_sending_from_older_talk_returns_to_the_present():
    state = chat()
    state.apply([msg(seq) for seq in range(100, 110)])
    state.jump("#general", 5)
    state.sent("#general", "s.1", "hi")
    view = state.rooms["#general"]
    assert not view.detached and view.window.lines[-1].text == "hi" and seqs(state) == list(range(100, 110))


# -- people, connection, other events


def test_people_from_presence_and_who():
    clock = FakeClock()
    state = chat(clock)
    effects = state.apply([ev.Presence("#general", "alice", "join", T0)])
    assert effects.who == {"#general"}  # who is there already?
    state.who_sent("#general")
    state.apply([ev.Who({"#general": ["alice", "bob"]})])
    people = state.rooms["#general"].people
    assert people.names == {"alice", "bob"} and people.known and not people.quiet
    assert "#general: alice, bob" not in [line.text for line in state.rooms["#general"].window.lines]
    state.apply([ev.Presence("#general", "carol", "join", T0), ev.Presence("#general", "bob", "timeout", T0)])
    assert people.names == {"alice", "carol"}
    assert [line.text for line in state.rooms["#general"].window.lines][-2:] == ["-- carol joined",
                                                                                "-- bob left (timed out)"]
    state.asked_who(automatic=False)  # /who typed: its answer is shown
    state.apply([ev.Who({"#general": ["alice", "carol"]})])
    assert state.rooms["#general"].window.lines[-1].text == "#general: alice, carol"


def test_a_room_too_big_for_presence_is_refreshed_by_who():
    clock = FakeClock()
    state = chat(clock)
    state.apply([ev.Connected("alice", "hi")])
    state.who_sent("#general")
    state.apply([ev.Who({"#general": [f"n{i}" for i in range(st.QUIET_ROOM + 1)]})])
    assert state.rooms["#general"].people.quiet
    assert state.tick().who == set()
    clock.advance(st.WHO_REFRESH + 1)
    assert state.tick().who == {"#general"}


def test_connection_states_in_the_status_bar():
    clock = FakeClock()
    state = chat(clock)
    assert state.status().connection == "connecting"
    state.apply([ev.Connected("alice", "motd here")])
    assert state.status().connection == "connected"
    assert [line.text for line in state.rooms["#general"].window.lines] == ["Connected as alice", "motd here"]
    state.apply([ev.ConnectionLost()])
    status = state.status()
    assert status.connection == "connection lost, retrying…" and status.lost
    effects = state.apply([ev.Connected("alice", "motd here", reconnected=True)])
    assert state.status().connection == "reconnected" and effects.who == {"#general"}
    clock.advance(st.RECONNECTED_FOR + 0.1)
    state.tick()
    assert state.status().connection == "connected"


def test_a_pairs_switch_in_the_status_bar():
    state = chat()
    state.apply([ev.Connected("alice", "motd here")])
    state.apply([ev.ConnectionLost(switching_to="127.0.0.1:5444")])
    status = state.status()
    assert status.connection == "connection lost, switching to 127.0.0.1:5444…" and status.lost
    assert status.server == "127.0.0.1:5444"  # the server it tries now
    assert state.rooms["#general"].window.lines[-1].text == "connection lost, switching to 127.0.0.1:5444…"
    state.apply([ev.Connected("alice", "motd here", reconnected=True)])
    assert state.status().connection == "reconnected" and state.status().server == "127.0.0.1:5444"


def test_search_results_open_the_overlay_and_an_empty_answer_is_a_line():
    state = chat()
    results = ev.SearchResults("deploy", (ev.Found("#dev", 5, T0, "bob", "the deploy", ((4, 10),)),))
    assert state.apply([results]).search is results
    assert state.apply([ev.SearchResults("nothing")]).search is None
    assert state.rooms["#general"].window.lines[-1].text == "-- 0 results for nothing"


def test_topics_notices_and_replies_become_lines():
    state = chat()
    state.apply([ev.Topic("#dev", "ship it", "carol", T0), ev.Notice("3 message(s) lost"), ev.Rooms({"#x": 2})])
    assert state.rooms["#dev"].window.lines[-1].text == "-- topic of #dev: ship it (set by carol)"
    texts = [line.text for line in state.rooms["#general"].window.lines]
    assert texts == ["-- 3 message(s) lost", "#x (2)"] and "#x" in state.known_rooms


# -- the input line


def test_completion_of_nicks_commands_and_rooms():
    state = chat()
    state.apply([ev.Who({"#general": ["alice", "alfred", "bob"]}), msg(1, sender="alfred")])
    nicks = state.nicks()
    assert nicks == ["alfred", "bob"]  # recent speakers first, never ourselves
    state.apply([ev.Who({"#general": ["alice", "alfred", "alicia", "bob"]})])
    nicks = state.nicks()
    done = Completer()
    assert done.complete("ali", 3, nicks, WORDS, ["#general"]) == ("alicia: ", 8)
    assert done.complete("hi ali", 6, nicks, WORDS, []) == ("hi alicia ", 10)
    assert done.complete("hi @bo", 6, nicks, WORDS, []) == ("hi @bob ", 8)
    assert done.complete("/jo", 3, nicks, WORDS, []) == ("/join ", 6)
    assert done.complete("/join #ge", 9, nicks, WORDS, ["#general", "#dev"]) == ("/join #general ", 15)
    assert done.complete("zzz", 3, nicks, WORDS, []) is None
    first = done.complete("al", 2, nicks, WORDS, [])
    assert first == ("alfred: ", 8)
    assert done.complete(*first, nicks, WORDS, []) == ("alicia: ", 8)  # Tab again: the next one
    assert done.complete("al rest", 2, nicks, WORDS, []) == ("alfred: rest", 7)


def test_input_history_keeps_the_line_being_typed():
    history = InputHistory()
    for line in ("one", "two", "two", " "):
        history.add(line)
    assert list(history.entries) == ["one", "two"]
    assert history.up("draft") == "two" and history.up("two") == "one" and history.up("one") is None
    assert history.down() == "two" and history.down() == "draft" and history.down() is None


def test_pasted_lines_and_when_to_ask():
    assert st.paste_lines("a\r\nb\n\n  \nc\n") == ["a", "b", "c"]
    assert not st.needs_confirmation(["x"] * 10) and st.needs_confirmation(["x"] * 11)


# -- the module's purity


def test_the_state_module_is_pure():
    source = Path(st.__file__).read_text()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not imported & {"textual", "rich", "zmq", "asyncio", "threading", "socket"}
    clocks = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr in {"time", "monotonic", "perf_counter"}
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "time"]
    assert clocks == []


# -- rendering, without a terminal


CONSOLE = Console(width=80, file=open("/dev/null", "w"), color_system="truecolor")  # noqa: SIM115


def text_of(segments_rows) -> list[str]:
    return ["".join(segment.text for segment in row) for row in segments_rows]


def test_other_peoples_controls_and_bidi_never_reach_the_terminal():
    th = render.theme(True)
    line = Line("message", "evil \x1b[2J\u202ename\x07 \x9b", T0, seq=1, sender="mal\x1b]0;x\x07lory")
    out = "".join(text_of(render.render(line, 80, "alice", th, CONSOLE)))
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out and "\x9b" not in out
    assert out.count("\ufffd") == 6


def test_links_are_osc8_hyperlinks_and_states_are_spelled_out():
    th = render.theme(True)
    line = Line("message", "see https://example.com/a?b=1, then", T0, seq=1, sender="bob")
    rows = render.render(line, 80, "alice", th, CONSOLE)
    links = {segment.style.link for row in rows for segment in row if segment.style and segment.style.link}
    assert links == {"https://example.com/a?b=1"}
    waiting = Line("message", "hi", T0, sender="alice", own=True, state="waiting")
    assert "(waiting: sending too fast)" in text_of(render.render(waiting, 80, "alice", th, CONSOLE))[0]
    failed = Line("message", "hi", T0, sender="alice", own=True, state="failed", reason="empty message")
    assert "✗ not sent: empty message" in text_of(render.render(failed, 80, "alice", th, CONSOLE))[0]


def test_wrapping_keeps_wide_characters_whole_and_indents_continuations():
    from rich.cells import cell_len

    th = render.theme(False)
    line = Line("message", "日本語" * 20 + " 🎉" * 10, T0, seq=1, sender="bob")
    rows = text_of(render.render(line, 40, "alice", th, CONSOLE))
    assert len(rows) > 2 and all(cell_len(row) <= 40 for row in rows)
    assert rows[0].startswith("12:00:00 <bob> ") and all(row.startswith(" " * render.TIME_WIDTH) for row in rows[1:])
    assert "".join(row[render.TIME_WIDTH:] for row in rows).replace(" ", "").count("日本語") == 20
    assert render.estimate(line, 40) <= len(rows)


def test_room_labels_fit_their_width_with_both_counts():
    th = render.theme(True)
    label = render.room_label(0, "#a-very-long-room-name", 12, 3, False, 16, th)
    assert label.cell_len == 16 and label.plain.endswith(" 12 @3") and "…" in label.plain
    assert render.room_label(9, "#tenth", 0, 0, True, 16, th).plain.startswith("  #tenth")
