"""The JSON API under ``/api/v1/`` (operator token required).

Every error leaves as ``{"error": {"code", "message", "field"?}}`` with the
status of its class in :mod:`tally.errors`. Handlers are thin: each calls the
view function that the CLI calls too, on its own DuckDB cursor, in a thread,
through the pool of :mod:`tally.query_pool` (its limits: how many at once, how
long, and its end when the client leaves).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
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
from tally.api_core import Core, authorise, json_body, operator, product_of
from tally.backup.snapshot import new_snapshot_path, snapshot_store
from tally.errors import TallyError
from tally.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tally.metrics import Pipeline, render
from tally.openapi import Operation, document
from tally.reports import KINDS, Product, parse, people, run_report
from tally.reports.bodies import BODIES
from tally.reports.query import People
from tally.validation import validated
from tally.views.common import Page
from tally.views.events import events_view
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
        request, lambda cursor: view(cursor, *args, **kwargs), pooled=pooled, timed=timed
    )
    return JSONResponse(answer)


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
    name = product_of(core, request)
    body = await json_body(request)
    found = core.catalog.product(name)
    product = Product(found.name, found.timezone, found.revenue_property)
    kind = request.path_params["kind"]
    if kind == "people" and "text/csv" in request.headers.get("accept", ""):
        query = parse(kind, body, product)  # a bad body is a 400 before any row is sent
        assert isinstance(query, People)
        chunks = await core.queries.stream(
            request, lambda cursor: _csv_chunks(cursor, query), all_threads=True
        )
        return StreamingResponse(
            chunks,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-people.csv"'},
        )

    def run(cursor: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        started = time.perf_counter()
        answer = run_report(cursor, product, kind, body)
        core.report_durations.observe(kind, time.perf_counter() - started)
        return answer

    return JSONResponse(await core.queries.run(request, run, all_threads=True))


async def metrics(request: Request) -> Response:
    """The pipeline in Prometheus' text format (tally.metrics), for an operator
    token (Prometheus sends one with ``authorization: {credentials: ...}``)."""
    core = authorise(request)

    def run(cursor: duckdb.DuckDBPyConnection) -> bytes:
        pipeline = Pipeline(core.settings.data_dir, core.reader, cursor, core.processor_state(),
                            core.report_durations, core.queries.counts())  # fmt: skip
        return render(pipeline)

    # Outside the pool: monitoring must answer while reports take every slot.
    answer = await core.queries.run(request, run, pooled=False)
    return Response(answer, media_type=METRICS_CONTENT_TYPE)


def _csv_chunks(cursor: duckdb.DuckDBPyConnection, query: People) -> Iterator[bytes]:
    """The people search as CSV, a thousand rows a chunk."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for n, row in enumerate(people.csv_rows(cursor, query), 1):
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

    def snapshot(cursor: duckdb.DuckDBPyConnection) -> dict[str, Any]:
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
    Operation("GET", "/metrics", metrics, "The pipeline in Prometheus' text format",
              media_types=(METRICS_CONTENT_TYPE,)),
]  # fmt: skip


def build_app(core: Core) -> Starlette:
    app = Starlette(
        routes=[Route(op.path, op.endpoint, methods=[op.method]) for op in OPERATIONS],
        exception_handlers={
            TallyError: _tally_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.openapi = document(OPERATIONS)
    app.state.core = core
    return app
