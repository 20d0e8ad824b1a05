"""What every zmqchat command shares: connection flags, ZMQCHAT_* environment defaults, error output."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from ..client.servers import server_list
from ..endpoints import DEFAULT_HOST, DEFAULT_PORT
from ..errors import ZmqchatError

TRUE_WORDS = {"1", "true", "yes", "on"}


def env_name(dest: str) -> str:
    return "ZMQCHAT_" + dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser, environ: dict[str, str] | None = None) -> None:
    """Let ``ZMQCHAT_<FLAG>`` set the default of every ``--flag`` (the command line still wins)."""
    environ = os.environ if environ is None else environ
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        raw = environ.get(env_name(action.dest))
        if raw is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            value: object = (raw.strip().lower() in TRUE_WORDS) == isinstance(action, argparse._StoreTrueAction)
        elif isinstance(action, argparse._AppendAction):  # a repeatable flag: comma-separated values
            convert = action.type or str
            try:
                value = [convert(item.strip()) for item in raw.split(",") if item.strip()]
            except (TypeError, ValueError):
                parser.error(f"{env_name(action.dest)}={raw!r} is not a valid list of {action.dest}")
        elif action.type is not None:
            try:
                value = action.type(raw)
            except argparse.ArgumentTypeError as exc:  # a type that says what is wrong
                parser.error(f"{env_name(action.dest)}={raw!r}: {exc}")
            except (TypeError, ValueError):
                parser.error(f"{env_name(action.dest)}={raw!r} is not a valid {action.dest}")
        else:
            value = raw
        action.default = value
        if action.help and action.help is not argparse.SUPPRESS:
            action.help += f" [from {env_name(action.dest)}]"


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """--host/--port/endpoints/keys, as shared by the client and the bots."""
    group = parser.add_argument_group("connection")
    group.add_argument("--host", default=DEFAULT_HOST, help="server address (default: %(default)s)")
    group.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="server's PULL port; its PUB is port+1 (default: %(default)s)")
    group.add_argument("--in-endpoint", help="full endpoint of the server's PULL, e.g. ipc:///tmp/chat-in")
    group.add_argument("--out-endpoint", help="full endpoint of the server's PUB, e.g. ipc:///tmp/chat-out")
    group.add_argument("--servers", type=servers_arg, metavar="HOST:PORT,HOST:PORT",
                       help="the two servers of a hot-standby pair (each its PULL port; its PUB is port+1), "
                       "instead of --host/--port: the client follows whichever is active")
    group.add_argument("--curve-secret", help="your CURVE secret key file (NAME.key_secret)")
    group.add_argument("--server-key", help="the server's CURVE public key file (NAME.key); with --servers, one "
                       "for all or a comma-separated list, one per server in order")
    group.add_argument("--connect-timeout", type=float, default=5.0,
                       help="seconds to wait for the server's welcome (default: %(default)s)")


def servers_arg(text: str) -> list[str]:
    """``--servers``: a comma-separated list of HOST:PORT, checked (argparse reports a bad one)."""
    try:
        return [server.label for server in server_list(text)]
    except ZmqchatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def server_keys(args: argparse.Namespace) -> str | list[str] | None:
    """``--server-key``: one file, or with ``--servers`` a comma-separated list of files, one per server."""
    key = args.server_key
    if key and getattr(args, "servers", None) and "," in key:
        return [item.strip() for item in key.split(",") if item.strip()]
    return key


def client_kwargs(args: argparse.Namespace) -> dict:
    """Client(...) keyword arguments from parsed connection flags."""
    kwargs = {"host": args.host, "port": args.port, "in_endpoint": args.in_endpoint, "out_endpoint": args.out_endpoint,
              "curve_secret": args.curve_secret, "server_key": server_keys(args),
              "connect_timeout": args.connect_timeout}
    if getattr(args, "servers", None):
        kwargs["servers"] = args.servers
    return kwargs


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def run_main(body: Callable[[], int]) -> int:
    """Known errors print ``ERROR: text`` and give status 1; Ctrl-C gives 130 unless handled inside."""
    try:
        return body()
    except ZmqchatError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
