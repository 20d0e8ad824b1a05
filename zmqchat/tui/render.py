"""How the full-screen client's rows look: ``state`` rows in, rich segments out (one list per screen row).

Someone else's text always goes through ``display.clean`` (controls and bidi marks become U+FFFD) before
it is styled; links in it become OSC 8 hyperlinks (a rich ``link`` style), which terminals that know them
make clickable. Colours come in a dark and a light set; every distinction also has an attribute (bold,
italic, dim, reverse, underline), so NO_COLOR (Textual then renders in monochrome) loses nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from ..client.display import clean, clock_time, name_colour
from .state import Deco, Line, Row

TIME_WIDTH = 9  # "12:01:07 ": continuation rows of a wrapped line are indented by it
LINK = re.compile(r"\bhttps?://[^\s<>\"'\x00-\x1f\ufffd]+[^\s<>\"'.,;:!?)\]}\x00-\x1f\ufffd]")
DARK_NICKS = ("#ff8787", "#87d787", "#ffd75f", "#87afff", "#d787ff", "#5fd7d7", "#ffaf5f", "#afd75f",
              "#ff87af", "#87d7ff", "#d7af87", "#afafff")
LIGHT_NICKS = ("#af0000", "#005f00", "#875f00", "#0000af", "#870087", "#005f87", "#af5f00", "#5f8700",
               "#af005f", "#005faf", "#5f5f00", "#5f00af")


@dataclass(frozen=True)
class Theme:
    """The styles of every kind of row, for a dark or a light background."""

    nicks: tuple[Style, ...]
    time: Style
    muted: Style
    history: Style
    own: Style
    mention: Style
    sending: Style
    waiting: Style
    failed: Style
    notice: Style
    error: Style
    topic: Style
    marker: Style
    highlight: Style
    link: Style
    mention_room: Style  # the room list's mention count
    current_room: Style


def theme(dark: bool = True) -> Theme:
    nicks = tuple(Style(color=c, bold=True) for c in (DARK_NICKS if dark else LIGHT_NICKS))
    grey = "#8a8a8a" if dark else "#5f5f5f"
    return Theme(
        nicks=nicks, time=Style(color=grey), muted=Style(color=grey), history=Style(color=grey, italic=True),
        own=Style(bold=True, underline=True), mention=Style(bold=True, color="black", bgcolor="#ffd75f"),
        sending=Style(dim=True), waiting=Style(dim=True, italic=True),
        failed=Style(color="#ff5f5f" if dark else "#af0000", bold=True),
        notice=Style(color="#ffd75f" if dark else "#875f00"), error=Style(color="#ff5f5f" if dark else "#af0000",
                                                                          bold=True),
        topic=Style(color="#5fd7d7" if dark else "#005f87"), marker=Style(color="#ff5f5f" if dark else "#af0000",
                                                                          bold=True),
        highlight=Style(reverse=True), link=Style(underline=True),
        mention_room=Style(bold=True, color="black", bgcolor="#ffd75f"), current_room=Style(bold=True, reverse=True))


def nick_style(name: str, th: Theme) -> Style:
    return th.nicks[name_colour(name, len(th.nicks))]


def linked(text: str, style: Style, th: Theme) -> Text:
    """``text`` (already cleaned) in ``style``, with each http(s) link an OSC 8 hyperlink."""
    out = Text(text, style=style)
    for match in LINK.finditer(text):
        out.stylize(th.link + Style(link=match.group()), match.start(), match.end())
    return out


def body(line: Line, me: str, th: Theme, highlight: int = 0) -> Text:
    """The part of a row after its time: ``<bob> hi``, ``* bob waves``, ``-- bob joined``, ..."""
    if line.kind != "message":
        style = {"error": th.error, "notice": th.notice, "topic": th.topic, "presence": th.muted,
                 "info": Style()}.get(line.kind, Style())
        return linked(clean(line.text), style, th)
    sender = clean(line.sender)
    nick = nick_style(line.sender, th)
    if line.own:
        nick = nick + th.own
    base = th.history if line.history else Style()
    text = clean(line.text)
    out = Text()
    if line.action:
        out.append(f"* {sender} ", nick + Style(italic=True))
        out.append_text(linked(text, base + Style(italic=True), th))
    else:
        out.append(f"<{sender}>", nick + (Style(italic=True) if line.history else Style()))
        out.append(" ")
        out.append_text(linked(text, base + (th.mention if line.mention else Style()), th))
    if line.state == "sending":
        out.stylize(th.sending)
    elif line.state == "waiting":
        out.stylize(th.waiting)
        out.append("  (waiting: sending too fast)", th.muted + Style(italic=True))
    elif line.state == "failed":
        out.stylize(Style(dim=True))
        out.append(f"  ✗ not sent: {clean(line.reason)}", th.failed)
    if highlight and line.seq == highlight:
        out.stylize(th.highlight)
    return out


def estimate(row: Row, width: int) -> int:
    """Rows a line will take at ``width`` without wrapping it (exact for short lines; at least the truth
    less word-wrap slack for long ones): the view measures what is on screen exactly."""
    if isinstance(row, Deco):
        return 1
    room = max(1, width - TIME_WIDTH)
    size = cell_len(row.text) + len(row.sender) + 3 + (30 if row.state else 0)
    if "\n" in row.text:
        return sum(1 + max(0, cell_len(part) - 1) // room for part in row.text.split("\n"))
    return 1 + max(0, size - 1) // room


def render(row: Row, width: int, me: str, th: Theme, console: Console, highlight: int = 0) -> list[list[Segment]]:
    """The screen rows of ``row`` at ``width`` cells."""
    width = max(1, width)
    if isinstance(row, Deco):
        return [_deco(row, width, th, console)]
    indent = TIME_WIDTH if width > 2 * TIME_WIDTH else 0
    content = body(row, me, th, highlight)
    content.expand_tabs(4)
    wrapped = content.wrap(console, max(1, width - indent), overflow="fold")
    stamp = th.history if row.history else th.time
    out: list[list[Segment]] = []
    for i, part in enumerate(wrapped):
        head = [Segment(clock_time(row.ts) + " " if i == 0 else " " * indent, stamp)] if indent else []
        out.append(head + list(part.render(console)))
    return out or [[Segment(clock_time(row.ts), stamp)]]


def _deco(row: Deco, width: int, th: Theme, console: Console) -> list[Segment]:
    if row.kind in ("day", "marker", "start"):
        label = f" {row.text} "
        side = max(0, width - cell_len(label)) // 2
        text = Text("─" * side + label + "─" * max(0, width - side - cell_len(label)),
                    th.marker if row.kind == "marker" else th.muted)
    else:
        text = Text(row.text, th.muted + Style(italic=True))
    text.truncate(width)
    return list(text.render(console))


def room_label(index: int, room: str, unread: int, mention_count: int, current: bool, width: int,
               th: Theme) -> Text:
    """One entry of the room list: ``1 #general  3 @1`` (the mention count stronger)."""
    number = f"{index + 1} " if index < 9 else "  "
    counts = Text()
    if unread:
        counts.append(f" {unread}", Style(bold=True))
    if mention_count:
        counts.append(" ")
        counts.append(f"@{mention_count}", th.mention_room)
    name_room = max(1, width - len(number) - counts.cell_len)
    label = Text(number, th.muted)
    label.append(room if cell_len(room) <= name_room else room[:max(1, name_room - 1)] + "…",
                 th.current_room if current else (Style(bold=True) if unread else Style()))
    label.append(" " * max(0, width - label.cell_len - counts.cell_len))
    label.append_text(counts)
    return label
