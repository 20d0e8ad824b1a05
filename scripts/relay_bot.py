#!/usr/bin/env python3
"""Relay bot: copies what is said in one room to another, and back (unless ``--one-way``).

    python scripts/relay_bot.py --room '#dev' --to '#general'
    # in #dev:      <alice> deploy done
    # in #general:  <relay> [#dev] <alice> deploy done

It never relays its own lines (so a two-way relay does not echo), nor the names given to ``--ignore``
(other bots, or another relay: two relays between the same rooms would otherwise copy each other).
"""

from __future__ import annotations

import sys

from zmqchat import events as ev
from zmqchat import protocol as p
from zmqchat.bot import Bot
from zmqchat.cli.bots import bot_from_args, bot_parser, parse_bot_args
from zmqchat.cli.common import run_main, setup_logging


def relay_text(message: ev.Message) -> str:
    """How a message reads in the other room: ``[#dev] <alice> text`` or ``[#dev] * alice waves``."""
    who = f"* {message.sender}" if message.action else f"<{message.sender}>"
    return f"[{message.room}] {who} {message.text}"


def make_bot(bot: Bot, source: str, target: str, two_way: bool = True, ignore: tuple[str, ...] = ()) -> Bot:
    """Give ``bot`` (already in both rooms) the relay's handler."""
    routes = {source: target, **({target: source} if two_way else {})}

    @bot.on_message
    def relay(bot: Bot, message: ev.Message) -> None:
        destination = routes.get(message.room)
        if destination is not None and message.sender not in ignore:
            bot.say(relay_text(message), destination)

    return bot


def main(argv: list[str] | None = None) -> int:
    parser = bot_parser("Relay bot: copies messages from --room to --to, and back unless --one-way.",
                        name="relay")
    parser.add_argument("--to", required=True, help="the other room")
    parser.add_argument("--one-way", action="store_true", help="relay from --room to --to only")
    parser.add_argument("--ignore", action="append", default=[], metavar="NAME",
                        help="never relay this sender (repeatable), e.g. another bot")
    args = parse_bot_args(parser, argv)
    setup_logging(args.log_level)
    source, target = p.normalise_room(args.room), p.normalise_room(args.to)
    if source == target:
        parser.error("--room and --to must be different rooms")
    return run_main(lambda: make_bot(bot_from_args(args, rooms=[source, target]), source, target,
                                     not args.one_way, tuple(args.ignore)).run())


if __name__ == "__main__":
    sys.exit(main())
