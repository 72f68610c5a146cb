"""The product's pages: overview, live feed, events, rejects, a person.

Each reads the view function that the API and the CLI read (tally.views), on
its own cursor, in a thread; nothing here computes an answer of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from tally import audit
from tally.accounts import Session, user_actor
from tally.api import live_feed, live_since, revoke_alias_as
from tally.api_models import EventsQuery, RejectsQuery
from tally.catalog import Product
from tally.errors import NotFound
from tally.validation import validated
from tally.views.common import Page
from tally.views.events import events_view
from tally.views.overview import overview_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view
from tally.web import sessions
from tally.web.render import Web, render, web_of


def product_of(web: Web, request: Request) -> Product:
    name = request.path_params["product"]
    if name not in {p.name for p in web.core.catalog.products()}:
        raise NotFound(f"there is no product named {name!r}", field="product")
    return web.core.catalog.product(name)


async def in_thread(request: Request, web: Web, view: Callable[..., dict[str, Any]],
                    *args: Any, **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """``view`` on a cursor of the store, in the API's query pool (its limits,
    and its end when the browser leaves: tally.query_pool)."""
    return await web.core.queries.run(request, lambda cursor: view(cursor, *args, **kwargs))


def signed_in(request: Request) -> tuple[Web, Session]:
    web = web_of(request)
    return web, web.session(request)


async def admin_form(request: Request) -> tuple[Web, Session, FormData]:
    """A form that changes something: an admin's session, its CSRF token checked."""
    web, session = signed_in(request)
    sessions.require_admin(session)
    form = await request.form()
    sessions.check_csrf(form, session.csrf)
    return web, session, form


async def home(request: Request) -> Response:
    web, _ = signed_in(request)
    first = web.core.catalog.products()
    target = f"/products/{first[0].name}/" if first else "/admin/products"
    return RedirectResponse(target, 303)


async def switch_product(request: Request) -> Response:
    """The product switcher's form (GET): to the same page of another product."""
    web, _ = signed_in(request)
    name = request.query_params.get("product", "")
    if name not in {p.name for p in web.core.catalog.products()}:
        raise NotFound(f"there is no product named {name!r}", field="product")
    return RedirectResponse(f"/products/{name}/", 303)


async def overview(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    data = await in_thread(request, web, overview_view, product.name, product.timezone,
                           web.core.reader, web.core.settings.data_dir)  # fmt: skip
    return render(request, "overview.html", session=session, product=product.name,
                  data=data)  # fmt: skip


async def live(request: Request) -> Response:
    web, _ = signed_in(request)
    product = product_of(web, request)
    return StreamingResponse(
        live_feed(web.core, product.name, live_since(request, None), 300.0,
                  request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )  # fmt: skip


async def events(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    q = validated(EventsQuery, request.query_params)
    data = await in_thread(request, web, events_view, product.name, event=q.event or None,
                           identity=q.identity or None, time_from=q.from_, time_to=q.to,
                           page=q.page, page_size=q.page_size)  # fmt: skip
    return render(request, "events.html", session=session, product=product.name, data=data,
                  query=q)  # fmt: skip


async def rejects(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    q = validated(RejectsQuery, request.query_params)
    data = await in_thread(request, web, rejects_view, product.name, reason=q.reason or None,
                           page=q.page, page_size=q.page_size)  # fmt: skip
    return render(request, "rejects.html", session=session, product=product.name, data=data,
                  query=q, replayed=request.query_params.get("replayed"))  # fmt: skip


async def replay(request: Request) -> Response:
    web, session, form = await admin_form(request)
    product = product_of(web, request)
    reason = str(form.get("reason") or "") or None
    result = await run_in_threadpool(web.core.processor.replay, product.name, reason)
    web.core.catalog.record(user_actor(session.user.name), audit.REJECTS_REPLAY, product.name,
                            {"reason": reason, **result})  # fmt: skip
    return RedirectResponse(f"/products/{product.name}/rejects?replayed={result['replayed']}", 303)


async def person(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    q = validated(Page, request.query_params)
    identity = request.path_params["identity"]
    data = await in_thread(request, web, person_view, product.name, identity, page=q.page,
                           page_size=q.page_size)  # fmt: skip
    return render(request, "person.html", session=session, product=product.name, data=data,
                  revoked=request.query_params.get("revoked"))  # fmt: skip


async def revoke(request: Request) -> Response:
    web, session, form = await admin_form(request)
    product = product_of(web, request)
    a, b = str(form.get("a") or ""), str(form.get("b") or "")
    done = await run_in_threadpool(revoke_alias_as, web.core, product.name, a, b,
                                   user_actor(session.user.name))  # fmt: skip
    identity = quote(request.path_params["identity"], safe="")
    said = quote(f"{done['a']} ~ {done['b']}")
    return RedirectResponse(f"/products/{product.name}/people/{identity}?revoked={said}", 303)
