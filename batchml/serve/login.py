"""The dashboard's password login (``batchml dashboard --basic-auth``): the users, passwords
compared in constant time, and a throttle per client address.

After a wrong password an address waits before its next try, 0.25 s doubling up to 8 s per
try; tries from one address take their turns one after the other, so parallel guesses wait
too. A try that would wait longer than ``LOGIN_WAIT_MAX_SECONDS`` is answered at once with
HTTP 429 and ``Retry-After``: behind a proxy that is not trusted every user shares the proxy's
address, and nobody should wait minutes for a login. The address is the connection's, or,
when the connection comes from a ``--trusted-proxy``, the one that proxy forwarded for
(``X-Forwarded-For``); an untrusted client's header is ignored, as anyone can write one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from panel.auth import BasicAuthProvider, BasicLoginHandler

from batchml.errors import BatchmlError

LOGIN_DELAY_SECONDS = 0.25  # before an address's 2nd try after a failure; doubles with each try
LOGIN_DELAY_MAX_SECONDS = 8.0  # so 50 guesses from one address take minutes, not a second
LOGIN_WAIT_MAX_SECONDS = 10.0  # the longest a try waits; beyond it: HTTP 429 at once
LOGIN_FORGET_SECONDS = 900  # an address's tries are forgotten after this long without one
LOGIN_ADDRESSES = 10_000  # addresses remembered; the least recently seen is forgotten first
USERS_EXAMPLE = '{"analyst": "a long random password"}'


# -- who may log in ---------------------------------------------------------------------------------


def looks_like_path(text: str) -> bool:
    """A --basic-auth value meant as a users file (one that is missing must not become the password)."""
    return (text.endswith(".json") or text.startswith(("/", "./", "../", "~"))
            or ("/" in text and Path(text).expanduser().parent.is_dir()))


def read_users(basic_auth: str) -> str | dict[str, str]:
    """--basic-auth's value: a file's users (a JSON object of user: password), or else a shared password."""
    path = Path(basic_auth).expanduser()
    if path.is_file():
        try:
            users = json.loads(path.read_text("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BatchmlError(f"--basic-auth {basic_auth}: not valid JSON ({exc}); write a JSON object of "
                               f"user: password, e.g. {USERS_EXAMPLE}") from None
        if not (isinstance(users, dict) and users
                and all(isinstance(u, str) and isinstance(p, str) and p for u, p in users.items())):
            raise BatchmlError(f"--basic-auth {basic_auth}: expected a JSON object of user: password (each password "
                               f"a non-empty string), e.g. {USERS_EXAMPLE}")
        return users
    if looks_like_path(basic_auth):
        raise BatchmlError(f"--basic-auth {basic_auth!r} looks like a users file, but there is no such file: fix the "
                           f"path or create it ({USERS_EXAMPLE}); a shared password is better given in "
                           "$BATCHML_DASHBOARD_PASSWORD, where ps does not show it")
    return basic_auth


class Passwords:
    """Checks a login in constant time: how much of a guess is right does not show in the reply's timing."""

    def __init__(self, users: str | dict[str, str]) -> None:
        self.users = users

    def check(self, username: str, password: str) -> bool:
        if isinstance(self.users, dict):
            expected = self.users.get(username, "")  # an unknown user costs the same comparison
            return hmac.compare_digest(password.encode(), expected.encode()) and username in self.users
        return hmac.compare_digest(password.encode(), self.users.encode())


# -- the throttle -----------------------------------------------------------------------------------


class TooManyTriesError(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Tries:
    count: int  # tries since the address's last success, the one in flight included
    next_at: float  # when its next try may be checked
    last: float  # when it last tried


def delay_after(tries: int) -> float:
    """The wait between an address's try number ``tries`` and its next one."""
    return min(LOGIN_DELAY_SECONDS * 2 ** (tries - 1), LOGIN_DELAY_MAX_SECONDS)


class LoginThrottle:
    """Tries per client address, in a table of at most ``capacity`` addresses (least recently seen
    forgotten first), so a flood of addresses cannot grow it without limit."""

    def __init__(self, capacity: int = LOGIN_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self._clock = capacity, clock
        self._tries: OrderedDict[str, _Tries] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tries)

    def reserve(self, address: str) -> float:
        """Seconds this try waits for its turn (counted as a failure until ``succeeded``), or
        ``TooManyTriesError`` when that would be longer than ``LOGIN_WAIT_MAX_SECONDS``."""
        now = self._clock()
        tries = self._tries.pop(address, None)
        if tries is None or now - tries.last > LOGIN_FORGET_SECONDS:
            tries = _Tries(0, now, now)
        self._tries[address] = tries  # the most recently seen last
        while len(self._tries) > self.capacity:
            self._tries.popitem(last=False)
        turn = max(now, tries.next_at)
        if turn - now > LOGIN_WAIT_MAX_SECONDS:
            raise TooManyTriesError(turn - now - LOGIN_WAIT_MAX_SECONDS)
        tries.count += 1
        tries.next_at, tries.last = turn + delay_after(tries.count), now
        return turn - now

    def succeeded(self, address: str) -> None:
        self._tries.pop(address, None)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: frozenset[str]) -> str:
    """The address a try is counted against: the peer's, unless the peer is a trusted proxy; then the
    nearest address in its ``X-Forwarded-For`` that is not itself a trusted proxy."""
    if peer not in trusted_proxies or not forwarded_for:
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    return next((hop for hop in reversed(hops) if hop not in trusted_proxies), peer)


# -- Panel's login, throttled -----------------------------------------------------------------------


class ThrottledLoginHandler(BasicLoginHandler):
    """Panel's password form, behind the throttle; waiting is asynchronous: other users are not held up.
    ``ThrottledAuthProvider`` makes a subclass holding one server's passwords, throttle and proxies."""

    passwords: Passwords
    throttle: LoginThrottle
    trusted_proxies: frozenset[str] = frozenset()

    async def post(self) -> None:
        address = client_address(self.request.remote_ip or "?", self.request.headers.get("X-Forwarded-For"),
                                 self.trusted_proxies)
        try:
            wait = self.throttle.reserve(address)
        except TooManyTriesError as busy:
            seconds = max(1, math.ceil(busy.retry_after))
            self.set_status(429)
            self.set_header("Retry-After", str(seconds))
            self.finish(f"Too many login attempts from your address: try again in {seconds} s.")
            return
        await asyncio.sleep(wait)
        self._accepted = False
        super().post()  # checks the password through _validate, then redirects
        if self._accepted:
            self.throttle.succeeded(address)

    def _validate(self, username: str, password: str) -> bool:
        self._accepted = self.passwords.check(username, password)
        return self._accepted


class ThrottledAuthProvider(BasicAuthProvider):
    def __init__(self, users: str | dict[str, str], trusted_proxies: Iterable[str] = ()) -> None:
        self._handler = type("LoginHandler", (ThrottledLoginHandler,), {
            "passwords": Passwords(users), "throttle": LoginThrottle(), "trusted_proxies": frozenset(trusted_proxies)})
        super().__init__()  # reads login_handler

    @property
    def login_handler(self):
        self._handler._login_endpoint, self._handler._login_template = self._login_endpoint, self._login_template
        return self._handler


def auth_provider(basic_auth: str | None, cookie_secret: str | None,
                  trusted_proxies: Iterable[str] = ()) -> ThrottledAuthProvider | None:
    """The login of ``batchml dashboard``, or None without --basic-auth; a bad setting refuses to start."""
    if not basic_auth:
        return None
    if not cookie_secret:  # without one Panel starts, then answers every request with HTTP 500
        raise BatchmlError(
            "--basic-auth needs --cookie-secret (or $BATCHML_COOKIE_SECRET) to sign login cookies: pass a random "
            "string, e.g. --cookie-secret \"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\"")
    return ThrottledAuthProvider(read_users(basic_auth), trusted_proxies)
