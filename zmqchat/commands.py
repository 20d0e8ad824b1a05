"""What a typed line means: a chat message, a /command, or leaving. Shared by every front end."""

from __future__ import annotations

from .client import Client
from .display import HELP
from .errors import ZmqchatError

QUIT = object()  # returned when the line means "leave"
COMMANDS = ("/join", "/part", "/rooms", "/who", "/me", "/history", "/stats", "/help", "/quit")


def run_line(client: Client, line: str) -> object | str | None:
    """Act on one input line. Returns QUIT, a text to show the user (help, hints, errors), or None."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.strip() == "exit":
        return QUIT
    if line.startswith("//"):
        line = line[1:]
    elif line.startswith("/"):
        return _command(client, line)
    if not client.room:
        return "ERROR: you are in no room: /join #room first"
    try:
        client.say(line)
    except ZmqchatError as exc:
        return f"ERROR: {exc}"
    return None


def _command(client: Client, line: str) -> object | str | None:
    word, _, rest = line.partition(" ")
    word, rest = word.lower(), rest.strip()
    try:
        if word == "/quit":
            return QUIT
        if word == "/help":
            return HELP
        if word == "/join":
            if not rest:
                return "usage: /join #room"
            client.join(rest.split()[0])
        elif word == "/part":
            left = client.part(rest.split()[0] if rest else None)
            return f"-- you left {left}" + (f"; now in {client.room}" if client.room else "")
        elif word == "/rooms":
            client.rooms()
        elif word == "/who":
            client.who(rest.split()[0] if rest else "")
        elif word == "/me":
            if not rest:
                return "usage: /me waves"
            client.say(rest, action=True)
        elif word == "/history":
            count = int(rest) if rest else 20
            if not 0 < count <= 1000:
                return "usage: /history [N], N from 1 to 1000"
            client.history(count)
        elif word == "/stats":
            client.stats()
        else:
            return f"unknown command {word}; /help lists them (// sends a line starting with /)"
    except ValueError:
        return "usage: /history [N], N from 1 to 1000"
    except ZmqchatError as exc:
        return f"ERROR: {exc}"
    return None
