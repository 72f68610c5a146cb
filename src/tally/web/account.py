"""Signing in and out, and choosing a password (the one-time one first)."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tally.accounts import same_token, user_actor
from tally.errors import InvalidInput, Unauthorized
from tally.web import sessions
from tally.web.render import render, web_of


def _safe_next(value: str | None) -> str:
    """Only a path of this server (never ``//elsewhere``)."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    return value if not parts.netloc and not parts.scheme else "/"


def _form(request: Request, *, status: int = 200, error: str | None = None,
          name: str = "") -> Response:  # fmt: skip
    token = sessions.new_sign_in_token()
    response = render(
        request,
        "sign_in.html",
        status=status,
        error=error,
        name=name,
        sign_in_token=token,
        next_url=_safe_next(request.query_params.get("next")),
        expired=request.query_params.get("expired") == "1",
    )
    sessions.set_cookie(response, request, sessions.SIGN_IN_COOKIE, token, max_age=3600)
    return response


async def sign_in_page(request: Request) -> Response:
    return _form(request)


async def sign_in(request: Request) -> Response:
    web = web_of(request)
    form = await request.form()
    name = str(form.get("name") or "").strip()
    password = str(form.get("password") or "")
    if not same_token(str(form.get("csrf") or ""),
                               request.cookies.get(sessions.SIGN_IN_COOKIE, "")):  # fmt: skip
        expired = "the sign-in form had expired: enter your name and password again"
        return _form(request, status=403, name=name, error=expired)
    await web.throttle.wait(name)
    try:
        user = web.accounts.verify(name, password)
    except Unauthorized as exc:
        web.throttle.failed(name)
        return _form(request, status=401, error=exc.message, name=name)
    web.throttle.succeeded(name)
    secret, _ = web.accounts.start_session(user)
    target = _safe_next(str(form.get("next") or "/"))
    response = RedirectResponse("/account/password" if user.must_change else target, 303)
    sessions.set_cookie(response, request, sessions.COOKIE, secret)
    response.delete_cookie(sessions.SIGN_IN_COOKIE, path="/")
    return response


async def sign_out(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request, password_page=True)
    sessions.check_csrf(await request.form(), session.csrf)
    web.accounts.end_session(session.secret_hash)
    response = RedirectResponse("/sign-in?signed_out=1", 303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


async def password_page(request: Request) -> Response:
    session = web_of(request).session(request, password_page=True)
    return render(request, "password.html", session=session, error=None)


async def change_password(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request, password_page=True)
    form = await request.form()
    sessions.check_csrf(form, session.csrf)
    new, again = str(form.get("password") or ""), str(form.get("again") or "")
    error = None
    if not session.user.must_change:
        try:
            web.accounts.verify(session.user.name, str(form.get("current") or ""))
        except Unauthorized:
            error = "the current password is not right"
    if error is None and new != again:
        error = "the two new passwords differ"
    if error is None:
        try:
            web.accounts.set_password(session.user.name, new, actor=user_actor(session.user.name),
                                      keep_session=session.secret_hash)  # fmt: skip
        except InvalidInput as exc:
            error = exc.message
    if error is not None:
        return render(request, "password.html", session=session, error=error, status=400)
    return RedirectResponse("/?password_changed=1", 303)
