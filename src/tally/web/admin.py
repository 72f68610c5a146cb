"""Admin pages: products, API keys, operator tokens and accounts.

Viewers may read these pages' lists but every form here is an admin's; each
change is written to the audit log by the catalog, as ``user NAME``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tally.accounts import ROLES, user_actor
from tally.errors import InvalidInput
from tally.web.pages import admin_form, signed_in
from tally.web.render import TEMPLATES, render


def base_url(request: Request) -> str:
    """This server as the browser reached it (behind a proxy: as the proxy says)."""
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    return f"{scheme}://{host}"


def snippet(base: str, key: str) -> str:
    """A ready-to-paste tracking snippet: KISSmetrics' ``_kmq`` commands
    (record, set, identify, alias) sent as beacons to this server."""
    return TEMPLATES.env.get_template("km_snippet.js").render(base=base, key=key)


def curl_line(base: str, key: str) -> str:
    return f"curl '{base}/e?_k={key}&_p=bob%40example.com&_n=Signed+Up'"


async def products_page(request: Request) -> Response:
    web, session = signed_in(request)
    base = base_url(request)
    found = web.core.catalog.products()
    return render(request, "admin_products.html", session=session, found=found,
                  snippet=lambda key: snippet(base, key), curl=lambda key: curl_line(base, key),
                  created_token=None)  # fmt: skip


async def _admin_form(request: Request) -> tuple[str, dict[str, str]]:
    _, session, form = await admin_form(request)
    return user_actor(session.user.name), {k: str(v) for k, v in form.items()}


async def create_product(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    made = web.core.catalog.create_product(form.get("name", "").strip(),
                                           timezone=form.get("timezone", "UTC").strip() or "UTC",
                                           actor=actor)  # fmt: skip
    return RedirectResponse(f"/admin/products#product-{made.name}", 303)


async def update_product(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    name = request.path_params["product"]
    web.core.catalog.update_product(name, timezone=form.get("timezone") or None,
                                    revenue_property=form.get("revenue_property") or None,
                                    actor=actor)  # fmt: skip
    return RedirectResponse(f"/admin/products#product-{name}", 303)


async def add_key(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    name = request.path_params["product"]
    web.core.catalog.add_key(name, key=form.get("key", "").strip() or None, actor=actor)
    return RedirectResponse(f"/admin/products#product-{name}", 303)


async def revoke_key(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    revoked = web.core.catalog.revoke_key(form.get("key", ""), actor=actor)
    return RedirectResponse(f"/admin/products#product-{revoked.product}", 303)


async def tokens_page(request: Request, created: tuple[str, str] | None = None) -> Response:
    web, session = signed_in(request)
    return render(request, "admin_tokens.html", session=session,
                  tokens=web.core.catalog.tokens(), created=created)  # fmt: skip


async def create_token(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    name = form.get("name", "").strip() or "operator"
    secret = web.core.catalog.create_token(name, actor=actor)
    return await tokens_page(request, created=(name, secret))


async def revoke_token(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    web.core.catalog.revoke_token(form.get("name", ""), every=True, actor=actor)
    return RedirectResponse("/admin/tokens", 303)


async def accounts_page(request: Request) -> Response:
    web, session = signed_in(request)
    return render(request, "admin_accounts.html", session=session,
                  users=web.accounts.users(), roles=ROLES)  # fmt: skip


async def create_account(request: Request) -> Response:
    web, _ = signed_in(request)
    actor, form = await _admin_form(request)
    if form.get("password", "") != form.get("again", ""):
        raise InvalidInput("the two passwords differ", field="password")
    web.accounts.create(form.get("name", "").strip(), form.get("password", ""),
                        role=form.get("role", "viewer"), actor=actor)  # fmt: skip
    return RedirectResponse("/admin/accounts", 303)


async def delete_account(request: Request) -> Response:
    web, session = signed_in(request)
    actor, form = await _admin_form(request)
    name = form.get("name", "")
    if name == session.user.name:
        raise InvalidInput("you cannot delete the account you are signed in with", field="name")
    web.accounts.delete(name, actor=actor)
    return RedirectResponse("/admin/accounts", 303)
