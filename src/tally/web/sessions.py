"""Who is signed in: the session cookie, CSRF tokens, and slowing down guessing.

The cookie holds the session's secret (tally.accounts keeps its hash): HttpOnly,
SameSite=Lax, and Secure when the request came over TLS through a proxy that
says so (``X-Forwarded-Proto: https``). Every state-changing form carries the
session's CSRF token; the sign-in form, which has no session yet, carries a
token that must equal one in a cookie of its own (double submit).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from tally.accounts import Accounts, Session, same_token
from tally.errors import Forbidden

COOKIE = "tally_session"
SIGN_IN_COOKIE = "tally_sign_in"
#: Failures of one name before each next try waits; the wait doubles, up to the cap.
FREE_FAILURES = 3
MAX_DELAY_SECONDS = 8.0
FORGET_SECONDS = 15 * 60


class SignInNeeded(Exception):
    """No live session: the page answers with a redirect to the sign-in form."""

    def __init__(self, next_url: str, expired: bool = False) -> None:
        super().__init__(next_url)
        self.next_url = next_url
        self.expired = expired


class PasswordChangeNeeded(Exception):
    """The account signed in with its one-time password: it chooses its own first."""


def secure(request: Request) -> bool:
    return request.headers.get("x-forwarded-proto", "").lower() == "https" or (
        request.url.scheme == "https"
    )


def set_cookie(response: Response, request: Request, name: str, value: str,
               max_age: int | None = None) -> None:  # fmt: skip
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="lax",
                        secure=secure(request))  # fmt: skip


def current(request: Request, accounts: Accounts, idle_seconds: float, *,
            password_page: bool = False) -> Session:  # fmt: skip
    """The request's live session, or SignInNeeded."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    secret = request.cookies.get(COOKIE, "")
    found = accounts.session(secret, int(idle_seconds * 1e9)) if secret else None
    if found is None:
        raise SignInNeeded(here, expired=bool(secret))
    if found.user.must_change and not password_page:
        raise PasswordChangeNeeded()
    return found


def sign_in_url(next_url: str, expired: bool = False) -> str:
    url = "/sign-in?next=" + quote(next_url, safe="/")
    return url + "&expired=1" if expired else url


def require_admin(session: Session) -> None:
    if not session.user.is_admin:
        raise Forbidden(
            f"the account {session.user.name!r} is a viewer: it reads every page and changes "
            "nothing; ask an admin",
            code="viewer",
        )


def check_csrf(form: FormData, expected: str) -> None:
    given = form.get("csrf")
    if not isinstance(given, str) or not same_token(given, expected):
        raise Forbidden(
            "this form came without its security token (CSRF), or with an old one: go back, "
            "reload the page and send it again",
            code="csrf",
        )


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class Throttle:
    """Slows down guessing: after ``FREE_FAILURES`` failures for one name (known
    or not), each try waits 1, 2, 4… seconds before it is answered."""

    failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    def delay(self, name: str) -> float:
        count, last = self.failures.get(name.lower(), (0, 0.0))
        if time.monotonic() - last > FORGET_SECONDS:
            return 0.0
        return (
            min(2.0 ** (count - FREE_FAILURES), MAX_DELAY_SECONDS)
            if count >= FREE_FAILURES
            else 0.0
        )

    async def wait(self, name: str) -> None:
        delay = self.delay(name)
        if delay:
            await asyncio.sleep(delay)

    def failed(self, name: str) -> None:
        count, last = self.failures.get(name.lower(), (0, 0.0))
        if time.monotonic() - last > FORGET_SECONDS:
            count = 0
        self.failures[name.lower()] = (count + 1, time.monotonic())
        if len(self.failures) > 10_000:  # many names tried: forget the oldest
            oldest = sorted(self.failures.items(), key=lambda item: item[1][1])[:5_000]
            for key, _ in oldest:
                del self.failures[key]

    def succeeded(self, name: str) -> None:
        self.failures.pop(name.lower(), None)
