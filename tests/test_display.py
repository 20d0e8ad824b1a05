"""How other people's text reaches a terminal: every control, bidi override and separator neutralised."""

from __future__ import annotations

import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zmqchat import events as ev
from zmqchat.cli.lineui import ChatUI
from zmqchat.client.display import UNSAFE_CHARS, clean, event_line, message_line

ATTACKS = {
    "C1 CSI (colour, cursor moves)": "\x9b31mred\x9b2J",
    "C1 OSC (window title, links)": "\x9d0;pwned\x9c",
    "NEL": "one\x85two",
    "ESC": "\x1b[2J\x1b]0;t\x07",
    "RLO (reversed text)": "innocent\u202eexe.gpj",
    "isolates and marks": "\u2066a\u2067b\u2068c\u2069\u200e\u200f\u061c",
    "LINE SEPARATOR": "fake\u2028[12:00:00] #general <admin> trust me",
    "PARAGRAPH SEPARATOR": "x\u2029y",
    "DEL and C0": "\x00\x07\x08\x7f",
}


def _message(text: str, sender: str = "bob") -> ev.Message:
    return ev.Message(room="#general", seq=1, ts=0.0, sender=sender, text=text, action=False, history=False,
                      own=False)


@pytest.mark.parametrize("text", list(ATTACKS.values()), ids=list(ATTACKS))
def test_message_lines_carry_no_unsafe_character(text):
    line = message_line(_message(text))
    assert not any(ord(ch) in UNSAFE_CHARS for ch in line)
    assert "\ufffd" in line


def test_unsafe_characters_cover_c0_c1_bidi_and_separators():
    for code in [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                 *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029]:
        assert clean(chr(code)) == "\ufffd", hex(code)


@pytest.mark.parametrize("text", ["héllo wörld", "日本語のテキスト", "👋🏽 family 👨‍👩‍👧", "e\u0301", "tab\there",
                                  "two\nlines", "שלום", "مرحبا"])
def test_ordinary_text_is_left_alone(text):
    assert clean(text) == text


@given(st.text())
def test_no_unsafe_character_survives_any_text(text):
    for line in (message_line(_message(text)), event_line(ev.Notice(text)), event_line(ev.Error("x", text))):
        assert not any(ord(ch) in UNSAFE_CHARS for ch in line or "")


def test_the_line_ui_renders_the_same_safe_text():
    ui = ChatUI.__new__(ChatUI)  # only the renderer: no terminal, no client loop
    ui.client = types.SimpleNamespace(name="alice")
    for text in ATTACKS.values():
        fragments, _ = ui.message_fragments(_message(text))
        assert not any(ord(ch) in UNSAFE_CHARS for _style, part in fragments for ch in part if ch != "\n")


def test_a_lost_connection_says_where_a_pairs_client_goes():
    assert event_line(ev.ConnectionLost()) == "connection lost, retrying…"
    assert event_line(ev.ConnectionLost(switching_to="127.0.0.1:5444")) == "connection lost, switching to 127.0.0.1:5444…"
    assert event_line(ev.ConnectionLost(switching_to="evil\x1b[2J:1")) == "connection lost, switching to evil\ufffd[2J:1…"


def test_the_line_ui_toolbar_says_where_a_pairs_client_goes():
    ui = ChatUI.__new__(ChatUI)  # only the connection state: no terminal, no client loop
    ui.clock, ui.state, ui._state_since, ui._switching_to, ui.exit_status = (lambda: 0.0), "connected", 0.0, "", None
    ui._track(ev.ConnectionLost(switching_to="127.0.0.1:5444"))
    assert ui.status() == "connection lost, switching to 127.0.0.1:5444…"
    ui._track(ev.Connected("alice", "", reconnected=True))
    assert ui.status() == "reconnected"
    ui._track(ev.ConnectionLost())
    assert ui.status() == "connection lost, retrying…"
