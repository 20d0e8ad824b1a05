#!/usr/bin/env python3
"""Echo bot: answers a mention by echoing its text back; ``!ping`` answers ``pong``.

    python scripts/echo_bot.py --name echo --room '#general'
    # in the chat:  @echo hello there   ->   <echo> alice said: hello there

The reply names the sender without addressing them (``alice said:``, not ``alice:``) and drops the
mention it answered, so two echo bots can never keep answering each other.
"""

from __future__ import annotations

import sys

from zmqchat import events as ev
from zmqchat.bot import Bot
from zmqchat.cli.bots import bot_from_args, bot_parser, parse_bot_args
from zmqchat.cli.common import run_main, setup_logging
from zmqchat.client.display import mentions, strip_mention


def make_bot(bot: Bot) -> Bot:
    """Give ``bot`` the echo bot's handlers."""

    @bot.command("!ping")
    def ping(bot: Bot, message: ev.Message, args: str) -> str:
        return "pong" + (f" {args}" if args else "")

    @bot.on_message
    def echo(bot: Bot, message: ev.Message) -> None:
        if mentions(message.text, bot.name):
            text = strip_mention(message.text, bot.name)
            bot.reply(message, f"{message.sender} said: {text}" if text else f"{message.sender}: yes?")

    return bot


def main(argv: list[str] | None = None) -> int:
    parser = bot_parser("Echo bot: answers a mention (@NAME or NAME: at the start) by echoing its text.",
                        name="echo")
    args = parse_bot_args(parser, argv)
    setup_logging(args.log_level)
    return run_main(lambda: make_bot(bot_from_args(args)).run())


if __name__ == "__main__":
    sys.exit(main())
