"""The JSON API under ``/api/v1/`` (operator token required).

Every error leaves as ``{"error": {"code", "message", "field"?}}`` with the
status of its class in :mod:`tally.errors`. Handlers are thin: each calls the
view function that the CLI calls too, on its own DuckDB cursor, in a thread,
through the pool of :mod:`tally.query_pool` (its limits: how many at once, how
long, and its end when the client leaves).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import duckdb
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tally import api_migrate, audit
from tally import api_models as models
from tally.api_core import (
    Core,
    authorise,
    encoded,
    json_answer,
    json_body,
    operator,
    product_of,
)
from tally.backup.snapshot import new_snapshot_path, snapshot_store
from tally.errors import NotFound, TallyError
from tally.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tally.metrics import Pipeline, render
from tally.openapi import Operation, document
from tally.operations import revoke_alias
from tally.reports import KINDS, Product, parse, people, run_report
from tally.reports.bodies import BODIES
from tally.reports.query import People
from tally.reports.sql import DIALECT, Dialect
from tally.saved import SavedReport, SavedReports
from tally.store.contract import Cursor
from tally.validation import validated
from tally.views.common import Page
from tally.views.events import events_view
from tally.views.live import applied_positions, format_cursor, live_between, parse_cursor
from tally.views.names import names_view
from tally.views.overview import overview_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view
from tally.views.status import status_view

log = logging.getLogger("tally.api")


async def _in_thread(
    request: Request,
    core: Core,
    view: Callable[..., dict[str, Any]],
    *args: Any,
    pooled: bool = True,
    timed: bool = True,
    **kwargs: Any,
) -> Response:
    """``view`` on a cursor of the store, in a thread of the query pool; see
    QueryPool.run for ``pooled`` and ``timed``."""
    answer = await core.queries.run(
        request, lambda cursor: encoded(view(cursor, *args, **kwargs)), pooled=pooled, timed=timed
    )
    return json_answer(answer)


async def status(request: Request) -> Response:
    core = authorise(request)
    # Outside the pool: monitoring must answer while reports take every slot.
    return await _in_thread(
        request, core, status_view, core.reader, core.processor_state(), pooled=False
    )


async def person(request: Request) -> Response:
    core = authorise(request)
    q = validated(Page, request.query_params)
    return await _in_thread(
        request,
        core,
        person_view,
        product_of(core, request),
        request.path_params["identity"],
        page=q.page,
        page_size=q.page_size,
    )


async def events(request: Request) -> Response:
    core = authorise(request)
    q = validated(models.EventsQuery, request.query_params)
    return await _in_thread(
        request,
        core,
        events_view,
        product_of(core, request),
        event=q.event,
        identity=q.identity,
        time_from=q.from_,
        time_to=q.to,
        page=q.page,
        page_size=q.page_size,
    )


async def rejects(request: Request) -> Response:
    core = authorise(request)
    q = validated(models.RejectsQuery, request.query_params)
    return await _in_thread(
        request,
        core,
        rejects_view,
        product_of(core, request),
        reason=q.reason,
        page=q.page,
        page_size=q.page_size,
    )


async def replay(request: Request) -> Response:
    core, actor = operator(request)
    product = product_of(core, request)
    reason = validated(models.Replay, await json_body(request)).reason
    result = await run_in_threadpool(core.processor.replay, product, reason)
    # Here, not in the thread: the catalog's one connection is the event loop's.
    core.catalog.record(actor, audit.REJECTS_REPLAY, product, {"reason": reason, **result})
    return JSONResponse(result)


async def report(request: Request) -> Response:
    core = authorise(request)
    product = report_product(core, request.path_params["product"])  # (404 before the body)
    name = product.name
    body = await json_body(request)
    kind = request.path_params["kind"]
    if kind == "people" and "text/csv" in request.headers.get("accept", ""):
        query = parse(kind, body, product)  # a bad body is a 400 before any row is sent
        assert isinstance(query, People)
        chunks = await core.queries.stream(
            request, lambda cursor: people_csv_chunks(cursor, query, core.dialect), all_threads=True
        )
        return StreamingResponse(
            chunks,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-people.csv"'},
        )

    def run(cursor: Cursor) -> bytes:
        started = time.perf_counter()
        answer = run_report(cursor, product, kind, body, d=core.dialect)
        core.report_durations.observe(kind, time.perf_counter() - started)
        return encoded(answer)

    return json_answer(await core.queries.run(request, run, all_threads=True))


def report_product(core: Core, name: str) -> Product:
    """The product as the reports read it (its time zone, its revenue property),
    or NotFound: one catalog read, which is also :func:`product_of`'s check."""
    found = core.catalog.product(name)
    return Product(found.name, found.timezone, found.revenue_property)


async def overview(request: Request) -> Response:
    core = authorise(request)
    product = report_product(core, request.path_params["product"])
    return await _in_thread(request, core, overview_view, product.name, product.timezone,
                            core.reader, core.settings.data_dir)  # fmt: skip


async def names(request: Request) -> Response:
    core = authorise(request)
    return await _in_thread(request, core, names_view, product_of(core, request))


#: How often the live feed looks for newly applied records, and how long it
#: stays silent before it sends a comment (the collectors close a connection
#: idle for --timeout seconds).
LIVE_POLL_SECONDS = 0.25
LIVE_KEEPALIVE_SECONDS = 10.0


async def live_feed(
    core: Core,
    product: str,
    since: dict[str, int] | None,
    seconds: float,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[bytes]:
    """Server-Sent Events: one ``record`` event a record applied (views.live),
    each with the cursor to resume after as its ``id`` (an EventSource sends
    it back as ``Last-Event-ID``); from ``since`` (a parsed cursor), else from now."""

    def read(since: dict[str, int] | None) -> tuple[dict[str, int], list[dict[str, Any]]]:
        # Small reads a poll, outside the query pool as /status is: the feed
        # goes on while reports take every slot.
        with core.processor.store.reading() as con:
            until = applied_positions(con)
            if since is None:
                return until, []
            return live_between(con, product, since, until)

    try:
        cursor, _ = await run_in_threadpool(read, since)
        ready = json.dumps({"cursor": format_cursor(cursor)})
        yield f"retry: 1000\nevent: ready\ndata: {ready}\n\n".encode()
        deadline = time.monotonic() + seconds
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not await disconnected():
            cursor, records = await run_in_threadpool(read, cursor)
            said = format_cursor(cursor)
            for record in records:
                data = json.dumps(record, ensure_ascii=False)
                yield f"id: {said}\nevent: record\ndata: {data}\n\n".encode()
            if records:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > LIVE_KEEPALIVE_SECONDS:
                yield b": still here\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(LIVE_POLL_SECONDS)
    except (TallyError, duckdb.Error) as exc:
        # The answer has started: the error is an event, and the stream ends
        # (an EventSource reconnects and goes on from its last id).
        failure = exc.to_json() if isinstance(exc, TallyError) else {
            "error": {"code": "store_failing", "message": str(exc).splitlines()[0]}}  # fmt: skip
        log.warning("the live feed of %s stopped: %s", product, failure["error"]["message"])
        yield f"event: error\ndata: {json.dumps(failure)}\n\n".encode()


def live_since(request: Request, after: str | None) -> dict[str, int] | None:
    """Where a reconnecting EventSource left off (``Last-Event-ID``), else
    ``after``, checked before the stream starts (a 400 names what is wrong)."""
    given = request.headers.get("last-event-id") or after
    return parse_cursor(given) if given else None


async def live(request: Request) -> Response:
    core = authorise(request)
    product = product_of(core, request)
    q = validated(models.LiveQuery, request.query_params)
    return StreamingResponse(
        live_feed(core, product, live_since(request, q.after), q.seconds,
                  request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )  # fmt: skip


async def products(request: Request) -> Response:
    core = authorise(request)
    return JSONResponse({"products": [p.to_json() for p in core.catalog.products()]})


async def create_product(request: Request) -> Response:
    core, actor = operator(request)
    body = validated(models.NewProduct, await json_body(request))
    made = core.catalog.create_product(body.name, key=body.key, timezone=body.timezone,
                                       actor=actor)  # fmt: skip
    return JSONResponse(made.to_json())


async def update_product(request: Request) -> Response:
    core, actor = operator(request)
    body = validated(models.ProductSettings, await json_body(request))
    changed = core.catalog.update_product(
        product_of(core, request),
        timezone=body.timezone,
        revenue_property=body.revenue_property,
        actor=actor,
    )
    return JSONResponse(changed.to_json())


async def add_key(request: Request) -> Response:
    core, actor = operator(request)
    body = validated(models.NewKey, await json_body(request))
    core.catalog.add_key(product_of(core, request), key=body.key, actor=actor)
    return JSONResponse(core.catalog.product(request.path_params["product"]).to_json())


async def revoke_key(request: Request) -> Response:
    core, actor = operator(request)
    revoked = core.catalog.revoke_key(request.path_params["key"], actor=actor)
    return JSONResponse(core.catalog.product(revoked.product).to_json())


async def create_token(request: Request) -> Response:
    core, actor = operator(request)
    name = validated(models.NewToken, await json_body(request)).name
    return JSONResponse({"name": name, "token": core.catalog.create_token(name, actor=actor)})


async def saved_list(request: Request) -> Response:
    core = authorise(request)
    found = SavedReports(core.catalog).list(product_of(core, request))
    return JSONResponse({"saved": [r.to_json() for r in found]})


def save_report(core: Core, product: str, name: str, kind: str, body: dict[str, Any],
                actor: str) -> SavedReport:  # fmt: skip
    """Check the body as the report would, then save it (the API and the pages)."""
    parse(kind, body, report_product(core, product))
    return SavedReports(core.catalog).save(product, name, kind, body, actor=actor)


async def saved_create(request: Request) -> Response:
    core, actor = operator(request)
    product = product_of(core, request)
    body = validated(models.NewSaved, await json_body(request))
    return JSONResponse(
        save_report(core, product, body.name, body.kind, body.body, actor).to_json()
    )


def _saved_id(request: Request) -> int:
    given = request.path_params["id"]
    if not given.isdigit() or len(given) > 18:
        raise NotFound(f"no saved report {given!r}", field="id")
    return int(given)


async def saved_get(request: Request) -> Response:
    core = authorise(request)
    found = SavedReports(core.catalog).get(product_of(core, request), _saved_id(request))
    return JSONResponse(found.to_json())


async def saved_delete(request: Request) -> Response:
    core, actor = operator(request)
    product = product_of(core, request)
    saved = SavedReports(core.catalog)
    found = saved.get(product, _saved_id(request))
    saved.delete(product, found.id, actor=actor)
    return JSONResponse(found.to_json())


def revoke_alias_as(core: Core, product: str, a: str, b: str, actor: str) -> dict[str, str]:
    """Append the revocation to the log and note who asked (the API and the pages)."""
    done = revoke_alias(core.settings.log_dir, product, a, b)
    core.catalog.record(actor, audit.ALIAS_REVOKE, product, {"a": done.a, "b": done.b})
    return {"product": product, "a": done.a, "b": done.b}


async def alias_revoke(request: Request) -> Response:
    core, actor = operator(request)
    product = product_of(core, request)
    body = validated(models.AliasRevocation, await json_body(request))
    return JSONResponse(await run_in_threadpool(revoke_alias_as, core, product, body.a, body.b,
                                                actor))  # fmt: skip


async def metrics(request: Request) -> Response:
    """The pipeline in Prometheus' text format (tally.metrics), for an operator
    token (Prometheus sends one with ``authorization: {credentials: ...}``)."""
    core = authorise(request)

    def run(cursor: Cursor) -> bytes:
        pipeline = Pipeline(core.settings.data_dir, core.reader, cursor, core.processor_state(),
                            core.report_durations, core.queries.counts())  # fmt: skip
        return render(pipeline)

    # Outside the pool: monitoring must answer while reports take every slot.
    answer = await core.queries.run(request, run, pooled=False)
    return Response(answer, media_type=METRICS_CONTENT_TYPE)


def people_csv_chunks(cursor: Cursor, query: People, d: Dialect = DIALECT) -> Iterator[bytes]:
    """The people search as CSV, a thousand rows a chunk."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for n, row in enumerate(people.csv_rows(cursor, query, d), 1):
        writer.writerow(row)
        if n % 1000 == 0:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


async def backup_snapshot(request: Request) -> Response:
    """A consistent copy of the store for `tally backup`, in ``run/snapshots/``
    (tally.backup), made while the processor goes on; the caller takes it away.
    Only the local CLI may ask: each call writes a whole copy of the store to
    the server's disk."""
    core = authorise(request, local_only=True)

    def snapshot(cursor: Cursor) -> dict[str, Any]:
        made = snapshot_store(cursor, new_snapshot_path(core.settings))
        return {"path": str(made.path), "positions": made.positions, "records": made.records}

    # A whole store takes its time, and only the local CLI asks: outside the
    # pool, untimed; stopped if the CLI goes away (the copy is then removed).
    return await _in_thread(request, core, snapshot, pooled=False, timed=False)


async def tokens(request: Request) -> Response:
    core = authorise(request)
    return JSONResponse({"tokens": [t.to_json() for t in core.catalog.tokens()]})


async def revoke_token(request: Request) -> Response:
    core, actor = operator(request)
    every = validated(models.Revoke, await json_body(request)).all
    revoked = core.catalog.revoke_token(request.path_params["name"], every=every, actor=actor)
    return JSONResponse({"revoked": [t.to_json() for t in revoked]})


async def audit_log(request: Request) -> Response:
    core = authorise(request)
    limit = validated(audit.AuditQuery, request.query_params).limit
    return JSONResponse({"entries": [e.to_json() for e in core.catalog.audit_entries(limit)]})


async def openapi(request: Request) -> Response:
    """This API's OpenAPI 3.1 document (tally.openapi); no token needed."""
    return JSONResponse(request.app.state.openapi)


async def _tally_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TallyError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    # (A ClientGone's answer goes nowhere: uvicorn drops what is sent to a
    # client that has gone.)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug: logged with its traceback, answered in the one error shape.
    log.error("unexpected error answering %s %s", request.method, request.url.path,
              exc_info=exc)  # fmt: skip
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "unexpected error; see the server log"}},
        status_code=500,
    )


PRODUCT = "/api/v1/products/{product}"
#: Every route of the API, with what the OpenAPI document says of it.
OPERATIONS = [
    Operation("GET", "/api/v1/openapi.json", openapi, "This document", public=True),
    Operation("GET", "/api/v1/status", status, "The log, the pipeline and the store",
              answer=models.Status),
    Operation("GET", PRODUCT + "/people/{identity:path}", person,
              "A person: identities, aliases, properties and events", query=Page,
              answer=models.Person),
    Operation("GET", PRODUCT + "/events", events, "Events, newest first",
              query=models.EventsQuery, answer=models.Events),
    Operation("GET", PRODUCT + "/rejects", rejects, "Rejected records with their reasons",
              query=models.RejectsQuery, answer=models.Rejects),
    Operation("POST", PRODUCT + "/rejects/replay", replay, "Apply rejected records again",
              body=models.Replay, answer=models.Replayed),
    Operation("POST", PRODUCT + "/reports/{kind}", report, "A report",
              per_value={kind: (BODIES[kind], models.ANSWERS[kind]) for kind in KINDS},
              csv_values=("people",)),
    Operation("POST", "/api/v1/backup/snapshot", backup_snapshot,
              "A consistent copy of the store, for `tally backup` on this machine"),
    Operation("GET", "/api/v1/tokens", tokens, "Operator tokens (never their secrets)",
              answer=models.Tokens),
    Operation("POST", "/api/v1/tokens/{name:path}/revoke", revoke_token,
              "Revoke an operator token", body=models.Revoke, answer=models.Revoked),
    Operation("GET", "/api/v1/audit", audit_log, "What operators changed, newest first",
              query=audit.AuditQuery, answer=models.Audit),
    *api_migrate.operations(PRODUCT),
    Operation("GET", PRODUCT + "/overview", overview,
              "Events per day over 30 days, people, top events, pipeline health",
              answer=models.Overview),
    Operation("GET", PRODUCT + "/names", names,
              "Event and property names with their counts (for pickers)", answer=models.Names),
    Operation("GET", PRODUCT + "/live", live, "Records as they are applied (Server-Sent Events)",
              query=models.LiveQuery, media_types=("text/event-stream",)),
    Operation("POST", PRODUCT + "/aliases/revoke", alias_revoke,
              "Revoke the aliases between two identities", body=models.AliasRevocation,
              answer=models.AliasRevoked),
    Operation("GET", "/api/v1/products", products, "Products with their API keys",
              answer=models.Products),
    Operation("POST", "/api/v1/products", create_product, "Create a product",
              body=models.NewProduct, answer=models.ProductAnswer),
    Operation("POST", PRODUCT + "/settings", update_product,
              "Change a product's time zone or revenue property", body=models.ProductSettings,
              answer=models.ProductAnswer),
    Operation("POST", PRODUCT + "/keys", add_key, "Add an API key", body=models.NewKey,
              answer=models.ProductAnswer),
    Operation("POST", "/api/v1/keys/{key}/revoke", revoke_key, "Revoke an API key",
              answer=models.ProductAnswer),
    Operation("POST", "/api/v1/tokens", create_token, "Create an operator token (shown once)",
              body=models.NewToken, answer=models.CreatedToken),
    Operation("GET", PRODUCT + "/saved", saved_list, "Saved reports", answer=models.SavedList),
    Operation("POST", PRODUCT + "/saved", saved_create, "Save a report", body=models.NewSaved,
              answer=models.Saved),
    Operation("GET", PRODUCT + "/saved/{id}", saved_get, "A saved report", answer=models.Saved),
    Operation("POST", PRODUCT + "/saved/{id}/delete", saved_delete, "Delete a saved report",
              answer=models.Saved),
    Operation("GET", "/metrics", metrics, "The pipeline in Prometheus' text format",
              media_types=(METRICS_CONTENT_TYPE,)),
]  # fmt: skip


def is_api(request: Request) -> bool:
    """Whether the request is the API's (JSON errors), not a page's."""
    path = request.url.path
    return path.startswith("/api/") or path == "/metrics"


def build_app(core: Core) -> Starlette:
    """The API's routes and the dashboard's pages (tally.web), in one app:
    one router, so that a path's methods answer 405 across both; errors
    answer in JSON under /api/ and as pages elsewhere."""
    from tally.web.app import PAGE_ERRORS, ROUTES, attach

    api_errors: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        TallyError: _tally_error,
        HTTPException: _http_error,
        Exception: _unexpected,
    }

    def either(kind: Any) -> Callable[[Request, Exception], Awaitable[Response]]:
        api_handler, page_handler = api_errors.get(kind), PAGE_ERRORS[kind]

        async def handle(request: Request, exc: Exception) -> Response:
            if api_handler is not None and is_api(request):
                return await api_handler(request, exc)
            return await page_handler(request, exc)

        return handle

    app = Starlette(
        routes=[
            *(Route(op.path, op.endpoint, methods=[op.method]) for op in OPERATIONS),
            *ROUTES,
        ],
        exception_handlers={kind: either(kind) for kind in PAGE_ERRORS},
    )
    app.state.openapi = document(OPERATIONS)
    app.state.core = core
    attach(app, core)
    return app
