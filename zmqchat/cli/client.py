"""``zmqchat-client --name alice``: chat from a terminal or a pipe.

On a terminal this is the full-screen client (zmqchat.tui, Textual) unless ``--ui`` (or ``ZMQCHAT_UI``) says
``line`` (zmqchat.cli.lineui, a prompt_toolkit prompt) or ``plain``; ``--line`` and ``--plain`` are short
forms. With pipes (or ``--ui plain``) it is a line-mode client whose one loop polls the SUB socket and stdin
together; ``--json`` prints one JSON object per event. At end of input the client waits until the server
has echoed every line it sent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import events as ev
from .. import protocol as p
from ..client.commands import Error, Help, Quit, Reply, run_line
from ..client.display import event_line
from ..client.sync import Client
from ..errors import ZmqchatError
from .common import TRUE_WORDS, add_connection_flags, apply_env_defaults, client_kwargs, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqchat-client", description="Chat client. Type messages; /help lists commands; exit leaves. "
        "Every flag can also be set as ZMQCHAT_<FLAG> (e.g. ZMQCHAT_NAME=alice).")
    parser.add_argument("--name", required="ZMQCHAT_NAME" not in os.environ, help="your nickname")
    parser.add_argument("--room", default="#general", help="room to start in (default: %(default)s)")
    add_connection_flags(parser)
    parser.add_argument("--drain-timeout", type=float, default=10.0,
                        help="seconds to wait, at end of input, for the server to confirm every message "
                        "(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print every event as one JSON object per line")
    ui = parser.add_argument_group("interface")
    ui.add_argument("--ui", choices=UIS, default=None,
                    help="full: the full-screen client; line: a prompt with the chat printed above it; plain: "
                    "line mode, as with pipes (default: full on a terminal; pipes and --json are always plain)")
    ui.add_argument("--line", dest="ui", action="store_const", const="line", help="short for --ui line")
    ui.add_argument("--plain", dest="ui", action="store_const", const="plain", help="short for --ui plain")
    apply_env_defaults(parser)
    return parser


UIS = ("full", "line", "plain")


def chosen_ui(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None,
              environ: dict[str, str] | None = None) -> str:
    """The interface asked for: the command line, else ZMQCHAT_UI (or ZMQCHAT_PLAIN / ZMQCHAT_LINE set to a
    true word), else full."""
    environ = os.environ if environ is None else environ
    ui = args.ui
    if ui is None:
        for short in ("plain", "line"):
            if environ.get(f"ZMQCHAT_{short.upper()}", "").strip().lower() in TRUE_WORDS:
                ui = short
                break
    ui = (ui or "full").strip().lower()
    if ui not in UIS:
        message = f"ZMQCHAT_UI={ui!r} is not one of {', '.join(UIS)}"
        if parser is not None:
            parser.error(message)
        raise ZmqchatError(message)
    return ui


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.ui = chosen_ui(args, parser)
    return run_main(lambda: chat(args))


def chat(args: argparse.Namespace) -> int:
    ui = getattr(args, "ui", None) or "full"
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and not args.json and ui != "plain"
    if interactive and ui == "full":
        full = _full_screen()
        if full is not None:
            return full(args.name, [p.normalise_room(args.room)], client_kwargs(args))
    client = Client(args.name, rooms=[p.normalise_room(args.room)], connect=False, **client_kwargs(args))
    try:
        client.connect()
    except KeyboardInterrupt:
        client.close(linger=0)
        return 130
    if interactive:
        from .lineui import run_line_ui

        return run_line_ui(client)
    show = _json_printer if args.json else _text_printer
    return LineLoop(client, show, args.drain_timeout, json_mode=args.json).run()


def _full_screen():
    """The full-screen client's entry point, or None (with a warning) when Textual cannot be imported."""
    try:
        from ..tui.app import run
    except ImportError as exc:
        print(f"-- the full-screen client needs textual ({exc}); using the line UI (--ui line)", file=sys.stderr)
        return None
    return run


def _text_printer(event: ev.Event) -> None:
    line = event_line(event)
    if line is not None:
        print(line, file=sys.stderr if isinstance(event, ev.Error) else sys.stdout, flush=True)


def _json_printer(event: ev.Event) -> None:
    print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)


class LineLoop:
    """stdin lines in, events out, one poll for both."""

    def __init__(self, client: Client, show, drain_timeout: float, json_mode: bool = False) -> None:
        self.client = client
        self.json_mode = json_mode
        self.show = show
        self.drain_timeout = drain_timeout
        self.fd = sys.stdin.fileno()
        self.partial = b""
        self.refused = 0  # input lines refused, here or by the server: a pipe must not exit 0 then

    def run(self) -> int:
        client = self.client
        try:
            status = self._loop()
        except KeyboardInterrupt:
            status = 0
        except ZmqchatError as exc:
            print(f"ERROR: {exc}", file=sys.stderr)
            status = 1
        if status == 0 and client.unacknowledged and not client.drain(self.drain_timeout):
            print(f"ERROR: the server did not confirm {client.unacknowledged} message(s) within "
                  f"{self.drain_timeout:g}s", file=sys.stderr)
            status = 1
        self._show_all(client.poll(0)[0])
        client.close()
        if status == 0 and self.refused:
            print(f"ERROR: {self.refused} input line(s) were refused (see above)", file=sys.stderr)
            status = 1
        return status

    def _loop(self) -> int:
        client = self.client
        for event in client.poll(0)[0]:  # what arrived during connect (welcome, backlog)
            self.show(event)
        while True:
            found, ready = client.poll(1.0, (self.fd,))
            status = self._show_all(found)
            if status is not None:
                return status
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    if self.partial:
                        self._line(self.partial)
                    return 0
                *lines, self.partial = (self.partial + chunk).split(b"\n")
                for raw in lines:
                    if isinstance(self._line(raw), Quit):
                        return 0

    def _show_all(self, found: list[ev.Event]) -> int | None:
        for event in found:
            self.show(event)
            if isinstance(event, ev.Error):
                if event.fatal:
                    return 1
                self.refused += 1
        return None

    def _line(self, raw: bytes) -> object:
        result = run_line(self.client, raw.decode("utf-8", errors="replace"))
        if isinstance(result, Error):
            self.refused += 1
            if self.json_mode:  # local problems are events too, so every line stays JSON
                self.show(ev.Error("local", result.message))
            else:
                print(f"ERROR: {result.message}", file=sys.stderr, flush=True)
        elif isinstance(result, (Reply, Help)):
            if self.json_mode:
                self.show(ev.Notice(result.text))
            else:
                print(result.text, flush=True)
        return result


if __name__ == "__main__":
    raise SystemExit(main())
