"""``zmqchat-keygen NAME``: write a CURVE keypair for a client or a server."""

from __future__ import annotations

import argparse

from .. import keys
from .. import protocol as p
from ..errors import ZmqchatError
from .common import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zmqchat-keygen", description="Write NAME.key (public, give it to "
                                     "the server operator) and NAME.key_secret (secret, yours only).")
    parser.add_argument("name", help="the name bound to this key (also the file name)")
    parser.add_argument("--dir", default=".", help="where to write the files (default: current directory)")
    parser.add_argument("--gateway", action="store_true",
                        help="a key for zmqchat-web: in a server's allowlist it may speak for the names its "
                             "users logged in with (docs/security.md)")
    args = parser.parse_args(argv)

    def body() -> int:
        problem = p.name_problem(args.name)
        if problem:
            raise ZmqchatError(f"invalid name {args.name!r}: {problem}")
        public, secret = keys.generate(args.name, args.dir, gateway=args.gateway)
        print(f"public key: {public}\nsecret key: {secret} (keep it private)")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
