#!/usr/bin/env python3
"""Announce: send a few lines to a room and exit once the server has confirmed every one (CI, cron).

    python scripts/announce.py --room '#builds' "build 1234 passed"
    make test 2>&1 | tail -n 3 | python scripts/announce.py --name ci --room '#builds'

Exit status 0 when every line was delivered; 1 with ``ERROR: …`` on stderr when the server could not be
reached or did not confirm every line within ``--timeout`` seconds.
"""

from __future__ import annotations

import sys

from zmqchat.cli.bots import bot_parser, parse_bot_args
from zmqchat.cli.common import client_kwargs, run_main, setup_logging
from zmqchat.client.sync import Client
from zmqchat.errors import ZmqchatError


def announce(client: Client, lines: list[str], room: str, timeout: float, action: bool = False) -> None:
    """Send ``lines`` to ``room`` and wait for the server to confirm them; raises ZmqchatError if it does not."""
    limit = client.session.max_text_bytes
    for number, line in enumerate(lines, 1):
        if len(line.encode()) > limit:  # checked before sending anything: all or nothing
            raise ZmqchatError(f"line {number} is too long ({len(line.encode())} bytes, at most {limit})")
    for line in lines:
        client.say(line, room, action=action)
    if not client.drain(timeout):
        raise ZmqchatError(f"the server did not confirm {client.unacknowledged} of {len(lines)} message(s) "
                           f"within {timeout:g}s")


def main(argv: list[str] | None = None) -> int:
    parser = bot_parser("Send the given text (or stdin, one message per line) to a room; exit 0 once "
                        "the server has confirmed every message.", name="announce")
    parser.add_argument("text", nargs="*", help="the message; several words make one message "
                        "(default: read stdin, one message per non-empty line)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server to confirm delivery (default: %(default)s)")
    parser.add_argument("--action", action="store_true", help="send as an action (like /me)")
    args = parse_bot_args(parser, argv)
    setup_logging(args.log_level)
    lines = [" ".join(args.text)] if args.text else [line.rstrip("\r\n") for line in sys.stdin]
    lines = [line for line in lines if line.strip()]
    if not lines:
        print("ERROR: nothing to announce (give text, or lines on stdin)", file=sys.stderr)
        return 1

    def body() -> int:
        client = Client(args.name, rooms=[args.room], **client_kwargs(args))
        try:
            announce(client, lines, client.room, args.timeout, args.action)
        except BaseException:
            client.close(linger=0)
            raise
        client.close()
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
