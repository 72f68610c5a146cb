"""The dashboard's routes, its static files and its error pages.

Mounted by :func:`tally.api.build_app` beside the JSON API. Every error is a
page that says what is wrong in words and links back; a missing or expired
session is a redirect to the sign-in form (the API keeps its JSON errors).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tally.accounts import Accounts
from tally.api_core import Core
from tally.errors import TallyError
from tally.web import account, admin, pages, reports, sessions
from tally.web.render import HERE, TEMPLATES, Web, render

log = logging.getLogger("tally.web")

#: plotly.js as the ``plotly`` package ships it, served from here (never a CDN).
_PLOTLY = importlib.util.find_spec("plotly")
PLOTLY_JS = Path(_PLOTLY.origin if _PLOTLY and _PLOTLY.origin else ".").parent / (
    "package_data/plotly.min.js"
)
P = "/products/{product}"


async def plotly_js(request: Request) -> Response:
    return FileResponse(PLOTLY_JS, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip


ROUTES: list[BaseRoute] = [
    Route("/", pages.home),
    Route("/sign-in", account.sign_in_page, methods=["GET"]),
    Route("/sign-in", account.sign_in, methods=["POST"]),
    Route("/sign-out", account.sign_out, methods=["POST"]),
    Route("/account/password", account.password_page, methods=["GET"]),
    Route("/account/password", account.change_password, methods=["POST"]),
    Route("/switch", pages.switch_product),
    Route(P + "/", pages.overview),
    Route(P, lambda r: RedirectResponse(r.url.path + "/", 308)),
    Route(P + "/live", pages.live),
    Route(P + "/events", pages.events),
    Route(P + "/rejects", pages.rejects),
    Route(P + "/rejects/replay", pages.replay, methods=["POST"]),
    Route(P + "/people/{identity:path}/revoke", pages.revoke, methods=["POST"]),
    Route(P + "/people/{identity:path}", pages.person),
    Route(P + "/reports/{kind}", reports.report),
    Route(P + "/reports/{kind}/csv", reports.report_csv),
    Route(P + "/saved", reports.saved_list, methods=["GET"]),
    Route(P + "/saved", reports.save, methods=["POST"]),
    Route(P + "/saved/{id}", reports.saved_report),
    Route(P + "/saved/{id}/delete", reports.delete_saved, methods=["POST"]),
    Route("/admin/products", admin.products_page, methods=["GET"]),
    Route("/admin/products", admin.create_product, methods=["POST"]),
    Route("/admin/products/{product}", admin.update_product, methods=["POST"]),
    Route("/admin/products/{product}/keys", admin.add_key, methods=["POST"]),
    Route("/admin/keys/revoke", admin.revoke_key, methods=["POST"]),
    Route("/admin/tokens", admin.tokens_page, methods=["GET"]),
    Route("/admin/tokens", admin.create_token, methods=["POST"]),
    Route("/admin/tokens/revoke", admin.revoke_token, methods=["POST"]),
    Route("/admin/accounts", admin.accounts_page, methods=["GET"]),
    Route("/admin/accounts", admin.create_account, methods=["POST"]),
    Route("/admin/accounts/delete", admin.delete_account, methods=["POST"]),
    Route("/static/vendor/plotly.min.js", plotly_js),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def _session_or_none(request: Request) -> object:
    try:
        return request.app.state.web.session(request, password_page=True)
    except (sessions.SignInNeeded, TallyError):
        return None


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    session = _session_or_none(request)
    product = request.path_params.get("product") if status != 404 else None
    return render(request, "error.html", session=session,  # type: ignore[arg-type]
                  product=product, status=status, title=title, message=message)  # fmt: skip


async def _sign_in_needed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, sessions.SignInNeeded)
    if request.method != "GET":
        return error_page(request, 401, "Signed out",
                          "your session has ended (signed out, or idle too long): sign in "
                          "again, then send the form again")  # fmt: skip
    return RedirectResponse(sessions.sign_in_url(exc.next_url, exc.expired), 303)


async def _password_needed(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/account/password", 303)


TITLES = {400: "That cannot be shown", 401: "Not signed in", 403: "Not allowed",
          404: "Not found", 409: "It exists already", 503: "Not available right now",
          504: "That took too long"}  # fmt: skip


async def _tally_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TallyError)
    return error_page(request, exc.status, TITLES.get(exc.status, "Error"), exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    said = {404: "there is no page at this address", 405: "this page cannot be used that way"}
    message = said.get(exc.status_code, str(exc.detail))
    return error_page(request, exc.status_code, TITLES.get(exc.status_code, "Error"), message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error answering %s %s", request.method, request.url.path,
              exc_info=exc)  # fmt: skip
    return error_page(request, 500, "Something went wrong",
                      "an unexpected error; it is in the server's log")  # fmt: skip


#: How a page answers each error (tally.api answers its own paths in JSON).
PAGE_ERRORS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    sessions.SignInNeeded: _sign_in_needed,
    sessions.PasswordChangeNeeded: _password_needed,
    TallyError: _tally_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}


def attach(app: Starlette, core: Core) -> None:
    """The dashboard's state, on the app that routes its pages."""
    app.state.web = Web(core, Accounts(core.catalog))
    # The first sign-in with an unknown name takes as long as any other.
    Accounts.prepare_sign_in()
    # Jinja compiles a template when it is first used: 40 ms for the report
    # page's, which its first visitor would wait for.
    for name in TEMPLATES.env.list_templates():
        TEMPLATES.env.get_template(name)
