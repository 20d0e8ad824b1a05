"""``zmqchat-web``: serve the chat page (``zmqchat.web``), or manage its users file.

    zmqchat-web [--http-port 8080] [--auth open|users --users FILE] [connection flags]
    zmqchat-web adduser|passwd|deluser NAME --users FILE

Every flag also reads ``ZMQCHAT_<FLAG>`` (``ZMQCHAT_HTTP_PORT=8081``, ``ZMQCHAT_AUTH=users``, ...). The
connection flags and the environment defaults are the client's (``cli.common``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from ..client.servers import server_list
from ..client.sync import _load_curve, load_keys
from ..endpoints import endpoints
from ..errors import ZmqchatError
from ..web import users as u
from ..web.gateway import CLAIM_RATE, LINGER, Config, serve
from .common import add_connection_flags, apply_env_defaults, run_main, server_keys

USER_COMMANDS = ("adduser", "passwd", "deluser")
DEFAULT_HTTP_PORT = 8080


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zmqchat-web", description="The chat in a browser: serves the page and bridges each browser to a "
        "zmqchat server. 'zmqchat-web adduser|passwd|deluser NAME --users FILE' manages --auth users. Every flag "
        "can also be set as ZMQCHAT_<FLAG> (e.g. ZMQCHAT_HTTP_PORT=8081).")
    web = parser.add_argument_group("web")
    web.add_argument("--http-host", default="127.0.0.1", help="address to serve the page on (default: %(default)s)")
    web.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                     help="port to serve the page on, 0 for any free one (default: %(default)s)")
    web.add_argument("--tls-cert", help="TLS certificate chain (PEM): serve https:// and wss:// directly")
    web.add_argument("--tls-key", help="the TLS certificate's private key (PEM)")
    web.add_argument("--trusted-proxy", action="append", default=[],
                     help="address of a reverse proxy whose X-Forwarded-For/-Proto/-Host are believed (repeatable; "
                     "comma-separated in the environment)")
    web.add_argument("--allowed-origin", action="append", default=[],
                     help="another origin (scheme://host[:port]) whose pages may connect, besides the gateway's own "
                     "(repeatable)")
    web.add_argument("--room", default="#general", help="room a new visitor starts in (default: %(default)s)")
    web.add_argument("--linger", type=float, default=LINGER,
                     help="seconds a name's session outlives its last tab, so a reload resumes it (default: "
                     "%(default)s)")
    who = parser.add_argument_group("who is who")
    who.add_argument("--auth", choices=("open", "users"), default="open",
                     help="open: a visitor picks any free name; users: names and passwords from --users "
                     "(default: %(default)s)")
    who.add_argument("--users", help="the users file for --auth users (made by 'zmqchat-web adduser')")
    who.add_argument("--claim-rate", type=float, default=CLAIM_RATE,
                     help="names one address may claim per second under --auth open, 0 for no limit "
                     "(default: %(default)s)")
    add_connection_flags(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="(default: %(default)s)")
    apply_env_defaults(parser)
    return parser


def build_user_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zmqchat-web", description="Manage the users file of --auth users. "
                                     "The password is asked for (twice), never given on the command line.")
    parser.add_argument("command", choices=USER_COMMANDS)
    parser.add_argument("name", help="the user's chat name")
    parser.add_argument("--users", required="ZMQCHAT_USERS" not in os.environ, help="the users file")
    apply_env_defaults(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in USER_COMMANDS:
        args = build_user_parser().parse_args(argv)
        return run_main(lambda: manage_users(args))
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return run_main(lambda: run_gateway(args))


def ask_password(prompt: Callable[[str], str] = getpass.getpass) -> str:
    first = prompt("password: ")
    if prompt("again: ") != first:
        raise ZmqchatError("the two passwords differ")
    return first


def manage_users(args: argparse.Namespace, prompt: Callable[[str], str] = getpass.getpass) -> int:
    path = Path(args.users)
    if args.command == "deluser":
        u.delete_user(path, args.name)
        print(f"removed {args.name} from {path}; a running gateway ends their logins", file=sys.stderr)
        return 0
    if args.command == "adduser" and args.name in u.load_users(path):
        raise ZmqchatError(f"user {args.name!r} exists already in {path} (passwd changes a password)")
    if args.command == "passwd" and args.name not in u.load_users(path):
        raise ZmqchatError(f"no user {args.name!r} in {path}")
    u.set_user(path, args.name, ask_password(prompt), must_exist=args.command == "passwd")
    print(f"{'added' if args.command == 'adduser' else 'changed the password of'} {args.name} in {path}",
          file=sys.stderr)
    return 0


def config_from(args: argparse.Namespace) -> Config:
    """The gateway's Config from parsed flags; ZmqchatError for a combination that cannot work."""
    if args.auth == "users" and not args.users:
        raise ZmqchatError("--auth users needs --users FILE (make one with: zmqchat-web adduser NAME --users FILE)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ZmqchatError("TLS needs both --tls-cert and --tls-key")
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ZmqchatError(f"cannot load the TLS certificate or key: {exc}") from exc
    proxies = frozenset(a.strip() for item in args.trusted_proxy for a in item.split(",") if a.strip())
    for address in proxies:
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise ZmqchatError(f"--trusted-proxy {address!r} is not an IP address") from exc
    origins = frozenset(o.strip().rstrip("/") for item in args.allowed_origin for o in item.split(",") if o.strip())
    if args.servers:
        if args.in_endpoint or args.out_endpoint:
            raise ZmqchatError("give either --servers or --in-endpoint/--out-endpoint, not both")
        curve, servers = load_keys(args.curve_secret, server_keys(args), server_list(args.servers))
        in_endpoint, out_endpoint = servers[0].in_endpoint, servers[0].out_endpoint
    else:
        in_endpoint, out_endpoint = endpoints(args.host, args.port, args.in_endpoint, args.out_endpoint)
        curve, servers = _load_curve(args.curve_secret, args.server_key), []
    return Config(in_endpoint=in_endpoint, out_endpoint=out_endpoint, curve=curve, servers=tuple(servers),
                  http_host=args.http_host, http_port=args.http_port, auth=args.auth,
                  users_file=Path(args.users) if args.users else None, tls=tls, trusted_proxies=proxies,
                  allowed_origins=origins, rooms=(args.room if args.room.startswith("#") else "#" + args.room,),
                  connect_timeout=args.connect_timeout, linger=args.linger, claim_rate=args.claim_rate)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_gateway(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config.auth == "open" and not loopback(config.http_host):
        print(f"WARNING: --auth open on {config.http_host}: anyone who can reach this address can chat under any "
              "free name; use --auth users --users FILE to require passwords", file=sys.stderr, flush=True)

    def ready(url: str) -> None:
        where = (f"chat servers {', '.join(s.label for s in config.servers)}" if len(config.servers) > 1
                 else f"chat server {config.in_endpoint}")
        print(f"zmqchat-web: serving {url} (auth {config.auth}; {where})", file=sys.stderr, flush=True)

    asyncio.run(serve(config, ready))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
