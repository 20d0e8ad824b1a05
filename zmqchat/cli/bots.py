"""The command line of a bot script: its flags, the ZMQCHAT_* defaults, and the bot they describe. Bots in
``scripts/`` use these; the library (``zmqchat.bot``) knows nothing of command lines."""

from __future__ import annotations

import argparse
from typing import Any

from ..bot import Bot
from .common import add_connection_flags, apply_env_defaults, client_kwargs


def bot_parser(description: str, name: str, room: str = "#general") -> argparse.ArgumentParser:
    """An argument parser with --name, --room and the client's connection flags. Add your own arguments,
    then call ``parse_bot_args`` (which applies the ZMQCHAT_* environment defaults)."""
    parser = argparse.ArgumentParser(description=description + " Every flag can also be set as "
                                     "ZMQCHAT_<FLAG> (e.g. ZMQCHAT_PORT=5555).")
    parser.add_argument("--name", default=name, help="the bot's nickname (default: %(default)s)")
    parser.add_argument("--room", default=room, help="room to join (default: %(default)s)")
    add_connection_flags(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="what to log on stderr (default: %(default)s)")
    return parser


def parse_bot_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` after letting ZMQCHAT_<FLAG> environment variables set the defaults."""
    apply_env_defaults(parser)
    return parser.parse_args(argv)


def bot_from_args(args: argparse.Namespace, **kwargs: Any) -> Bot:
    """A bot named and connected as the flags of ``bot_parser`` say."""
    kwargs.setdefault("rooms", [args.room])
    return Bot(args.name, **client_kwargs(args), **kwargs)
