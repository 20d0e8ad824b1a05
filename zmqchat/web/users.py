"""Who may log in to the gateway (``--auth users``), and who is logged in.

- The users file: one line per person, ``NAME scrypt$N$r$p$SALT$HASH`` (base64), written with mode 0600
  and replaced atomically. Passwords are hashed with ``hashlib.scrypt`` and a random 16-byte salt per
  password; nothing here is home-made cryptography, and comparisons are constant-time.
- ``Logins``: random opaque tokens (``secrets.token_urlsafe``), each naming one person, looked up by the
  gateway. A token means nothing by itself: no signing, no content; ending it on the gateway ends it.
- ``LoginGuard``: failed logins are limited per address and per name (token buckets).

Time is injected (``clock``) wherever a rule depends on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import protocol as p
from ..errors import ZmqchatError
from ..server.ratelimit import RateLimiter

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and some 50 ms per hash: the usual interactive setting
SALT_BYTES = 16
HASH_BYTES = 32
SCHEME = "scrypt"
TOKEN_BYTES = 32  # of randomness in a login token
LOGIN_TTL = 7 * 24 * 3600.0  # seconds a --auth users login lasts (the gateway forgets all logins on restart)
FAILED_RATE = 0.1  # failed logins per second regained, per address and per name
FAILED_BURST = 5.0  # failed logins allowed at once before the rate applies
MIN_PASSWORD_CHARS = 8


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$SALT$HASH`` for ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES)
    return "$".join([SCHEME, str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a ``hash_password`` result); False for anything malformed."""
    try:
        scheme, n, r, par, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        n_, r_, p_ = int(n), int(r), int(par)
        if not (2 <= n_ <= 2**20 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False  # a tampered file must not make one login cost gigabytes
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=n_, r=r_, p=p_,
                             dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY: list[str] = []  # a hash checked for unknown names, so they take as long as known ones (made once)


def check_login(users: dict[str, str], name: str, password: str) -> bool:
    """Whether ``name`` may log in with ``password``; as slow for an unknown name as for a known one."""
    stored = users.get(name)
    if stored is None and not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_hex(8)))
    ok = verify_password(password, stored if stored is not None else _DUMMY[0])
    return ok and stored is not None


# -- the users file


def load_users(path: str | Path) -> dict[str, str]:
    """Name -> stored hash. A missing file is no users; a malformed line is an error naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ZmqchatError(f"cannot read the users file {path}: {exc.strerror}") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, stored = line.strip().partition(" ")
        if p.name_problem(name) or not stored.startswith(SCHEME + "$"):
            raise ZmqchatError(f"{path}:{number}: not a 'NAME scrypt$...' line")
        users[name] = stored
    return users


def save_users(path: str | Path, users: dict[str, str]) -> None:
    """Write the users file atomically (a reader sees the old one or the new one), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(f"{name} {stored}\n" for name, stored in sorted(users.items()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_user(path: str | Path, name: str, password: str, *, must_exist: bool | None) -> None:
    """Add (``must_exist`` False), change (True) or upsert (None) ``name``'s password."""
    problem = p.name_problem(name)
    if problem:
        raise ZmqchatError(f"invalid name {name!r}: {problem}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ZmqchatError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    users = load_users(path)
    if must_exist is True and name not in users:
        raise ZmqchatError(f"no user {name!r} in {path}")
    if must_exist is False and name in users:
        raise ZmqchatError(f"user {name!r} exists already in {path} (passwd changes a password)")
    users[name] = hash_password(password)
    save_users(path, users)


def delete_user(path: str | Path, name: str) -> None:
    users = load_users(path)
    if users.pop(name, None) is None:
        raise ZmqchatError(f"no user {name!r} in {path}")
    save_users(path, users)


# -- logins


@dataclass
class Login:
    token: str
    name: str
    expires: float  # clock time


class Logins:
    """Login tokens in memory: token -> name. Every lookup checks the expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = LOGIN_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self._by_token: dict[str, Login] = {}

    def issue(self, name: str) -> str:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._by_token[token] = Login(token, name, self.clock() + self.ttl)
        return token

    def lookup(self, token: str | None) -> str | None:
        """The name ``token`` is a login of, or None (unknown, ended or expired)."""
        login = self._by_token.get(token or "")
        if login is None:
            return None
        if self.clock() >= login.expires:
            del self._by_token[login.token]
            return None
        return login.name

    def end(self, token: str) -> str | None:
        login = self._by_token.pop(token, None)
        return None if login is None else login.name

    def end_name(self, name: str) -> list[str]:
        """End every login of ``name``; returns their tokens."""
        ended = [t for t, login in self._by_token.items() if login.name == name]
        for token in ended:
            del self._by_token[token]
        return ended

    def names(self) -> set[str]:
        return {login.name for login in self._by_token.values()}

    def __len__(self) -> int:
        return len(self._by_token)


class LoginGuard:
    """Failed logins per address and per name: FAILED_BURST at once, then one per 1/FAILED_RATE seconds."""

    def __init__(self, rate: float = FAILED_RATE, burst: float = FAILED_BURST) -> None:
        self._addresses = RateLimiter(rate, burst, max_keys=50_000)
        self._names = RateLimiter(rate, burst, max_keys=50_000)

    def wait(self, address: str, name: str, now: float) -> float:
        """Seconds before ``address`` may try ``name`` again (0: now)."""
        waits = []
        for limiter, key in ((self._addresses, address), (self._names, name)):
            bucket = limiter.bucket(key, now)
            if bucket is not None and bucket.refill(now) < 1.0:
                waits.append((1.0 - bucket.tokens) / bucket.rate)
        return max(waits, default=0.0)

    def failed(self, address: str, name: str, now: float) -> None:
        for limiter, key in ((self._addresses, address), (self._names, name)):
            limiter.check(key, now)
