"""CURVE key files in pyzmq's certificate format, and the allowlist that binds public keys to names.

No crypto here: ``zmq.auth`` makes and reads the keys; this module only names files and reads names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import zmq.auth

from .errors import ZmqchatError
from .protocol import ANY_NAME

_NAME_RE = re.compile(r'^\s*name\s*=\s*"([^"]*)"\s*$', re.MULTILINE)
_ROLE_RE = re.compile(r'^\s*role\s*=\s*"?([^"\s]*)"?\s*$', re.MULTILINE)
GATEWAY = ANY_NAME  # what the allowlist binds a gateway's key to: any name


def generate(name: str, directory: str | Path, gateway: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600); returns both paths. A
    ``gateway`` key carries ``role = "gateway"``: in a server's allowlist it may speak for any name."""
    if Path(name).name != name or name.startswith(".") or "\\" in name:
        raise ZmqchatError(f"invalid key name {name!r}: it becomes a file name (no '/', '\\' or leading '.')")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZmqchatError(f"cannot create {directory}: {exc}") from exc
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ZmqchatError(f"{path} already exists; not overwriting a key")
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(str(directory), name,
                                     metadata={"name": name, **({"role": "gateway"} if gateway else {})})
        if gateway:  # pyzmq puts metadata in the secret file only; the allowlist reads the public one
            text = public.read_text()
            public.write_text(text.replace("metadata\n", 'metadata\n    role = "gateway"\n', 1))
    finally:
        os.umask(old)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; ZmqchatError with a clear text otherwise."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ZmqchatError(f"cannot read key file {path}: {exc}") from exc
    if not secret:
        raise ZmqchatError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ZmqchatError(f"cannot read key file {path}: {exc}") from exc
    return public


def load_allowlist(directory: str | Path) -> dict[str, str]:
    """Map each public key (Z85 text) in ``directory``'s ``*.key`` files to its bound name: the
    certificate's ``name`` metadata, else the file name without ``.key``; ``GATEWAY`` for a key whose
    certificate says ``role = "gateway"`` (a web gateway, which speaks for the names it authenticated)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ZmqchatError(f"authorized keys directory {directory} does not exist")
    bound: dict[str, str] = {}
    for path in sorted(directory.glob("*.key")):
        public = load_public(path)
        text = path.read_text(errors="replace")
        match, role = _NAME_RE.search(text), _ROLE_RE.search(text)
        name = match.group(1) if match else path.stem
        bound[public.decode()] = GATEWAY if role and role.group(1) == "gateway" else name
    return bound
