"""How events read as text lines. Pure: shared by the plain line client and the terminal UI."""

from __future__ import annotations

import re
import time
import zlib

from .. import events as ev

PRESENCE_WORDS = {"join": "joined", "part": "left", "quit": "left", "timeout": "left (timed out)",
                  "revoked": "left (key no longer authorized)"}
# What someone else's text must not carry to a terminal (or a page): C0 controls but tab and newline, DEL,
# C1 controls (U+0080-U+009F: CSI, OSC and NEL among them, which terminals obey like ESC [ and ESC ]),
# the bidi embeddings, overrides, isolates and marks (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
# U+061C: they reorder what follows, e.g. to disguise a name or a link), and the line and paragraph
# separators U+2028 and U+2029 (a new line that a line-based reader does not expect). Each becomes U+FFFD.
UNSAFE_CHARS = frozenset([*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                          *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029])
_CONTROL = dict.fromkeys(UNSAFE_CHARS, "\ufffd")


def clean(text: str) -> str:
    """Neutralise what in someone else's text could drive a terminal or reorder the line: see UNSAFE_CHARS."""
    return text.translate(_CONTROL)


def mention_pattern(name: str) -> re.Pattern[str]:
    """``@name`` as a word anywhere, or ``name:`` / ``name,`` opening the text; case-insensitive."""
    n = re.escape(name)
    return re.compile(rf"(?<![^\s(\[{{,;])@{n}(?:[:,](?=\s|$))?(?![^\s,.:;!?)\]}}'\"])|^\s*{n}[:,](?=\s|$)", re.IGNORECASE)


def mentions(text: str, name: str) -> bool:
    """Whether ``text`` addresses ``name`` (``@alice``, or a line starting ``alice:``)."""
    return bool(mention_pattern(name).search(text))


def strip_mention(text: str, name: str) -> str:
    """``text`` without its mentions of ``name``: ``"@echo hi there"`` -> ``"hi there"``."""
    return " ".join(mention_pattern(name).sub(" ", text).split())


def name_colour(name: str, palette_size: int) -> int:
    """A stable index into a palette for ``name``: the same in every process and on every run."""
    return zlib.crc32(name.encode()) % palette_size


def clock_time(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def message_line(event: ev.Message) -> str:
    """``[12:01:07] #general <bob> hi``; ``/me`` actions read ``* bob waves``; replayed old talk is
    marked ``(history)``."""
    text = clean(event.text).replace("\n", "\n    ")
    who = f"* {clean(event.sender)}" if event.action else f"<{clean(event.sender)}>"
    old = "(history) " if event.history else ""
    return f"[{clock_time(event.ts)}] {event.room} {old}{who} {text}"


def found_line(found: ev.Found, mark: tuple[str, str] = ("", "")) -> str:
    """``[12:01:07] #dev <bob> the deploy failed`` with each match between ``mark``'s two strings."""
    text, out, at = found.text, [], 0
    for start, end in found.marks:
        out += [clean(text[at:start]), mark[0], clean(text[start:end]), mark[1]]
        at = end
    out.append(clean(text[at:]))
    return f"[{clock_time(found.ts)}] {found.room} <{clean(found.sender)}> {''.join(out)}".replace("\n", " ")


def topic_line(event: ev.Topic) -> str:
    if not event.text:
        return f"-- {event.room}: topic cleared by {clean(event.by)}"
    return f"-- topic of {event.room}: {clean(event.text)} (set by {clean(event.by)})"


def lost_line(switching_to: str = "") -> str:
    """What a lost connection looks like: where the client tries now, for a pair's client."""
    return f"connection lost, switching to {clean(switching_to)}…" if switching_to else "connection lost, retrying…"


def event_line(event: ev.Event) -> str | None:
    """One readable line (or a few) for any event; None for events that need no text."""
    if isinstance(event, ev.Message):
        return message_line(event)
    if isinstance(event, ev.Presence):
        word = PRESENCE_WORDS.get(event.event, event.event)
        return f"[{clock_time(event.ts)}] {event.room} -- {clean(event.name)} {word}"
    if isinstance(event, ev.Connected):
        head = "reconnected" if event.reconnected else f"Connected as {clean(event.name)}"
        return head if event.reconnected else f"{head}\n{clean(event.motd)}"
    if isinstance(event, ev.ConnectionLost):
        return lost_line(event.switching_to)
    if isinstance(event, ev.Who):
        return "\n".join(f"{room}: {', '.join(map(clean, names)) or '(nobody)'}" for room, names in event.rooms.items()) \
            or "you are in no room"
    if isinstance(event, ev.Rooms):
        return "\n".join(f"{room} ({count})" for room, count in event.rooms.items()) or "no rooms"
    if isinstance(event, ev.Stats):
        return " ".join(f"{k}={v}" for k, v in event.stats.items())
    if isinstance(event, ev.Notice):
        return f"-- {clean(event.text)}"
    if isinstance(event, ev.Error):
        return f"ERROR: {clean(event.message)}"
    if isinstance(event, ev.ServerShutdown):
        return f"-- server: {clean(event.message)}"
    if isinstance(event, ev.Topic):
        return topic_line(event)
    if isinstance(event, ev.SearchResults):
        head = f"-- {len(event.results)} result{'s' if len(event.results) != 1 else ''} for {clean(event.query)}"
        head += " (newest first; more not shown)" if event.more else (" (newest first)" if event.results else "")
        return "\n".join([head, *(found_line(found, ("*", "*")) for found in event.results)])
    if isinstance(event, ev.Page):
        if not event.messages:
            return f"-- {event.room}: nothing older" + (" (the start of the room)" if event.start else "")
        lines = [message_line(message) for message in event.messages]
        return "\n".join(lines + ([f"-- {event.room}: the start of the room"] if event.start else []))
    return None

