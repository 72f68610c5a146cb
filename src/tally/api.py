"""The JSON API under ``/api/v1/`` (operator token required).

Every error leaves as ``{"error": {"code", "message", "field"?}}`` with the
status of its class in :mod:`tally.errors`. Handlers are thin: each calls the
view function that the CLI calls too, on its own DuckDB cursor, in a thread,
through the pool of :mod:`tally.query_pool` (its limits: how many at once, how
long, and its end when the client leaves).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tally import audit
from tally.backup.snapshot import new_snapshot_path, snapshot_store
from tally.catalog import Catalog
from tally.errors import InvalidInput, TallyError, Unauthorized
from tally.log.reader import LogReader
from tally.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tally.metrics import REPORT_BUCKETS, Durations, Pipeline, render
from tally.processor import Processor
from tally.query_pool import QueryPool
from tally.reports import Product, parse, people, run_report
from tally.reports.query import People, json_object
from tally.settings import Settings
from tally.views.common import require_product
from tally.views.events import events_view
from tally.views.person import person_view
from tally.views.rejects import rejects_view
from tally.views.status import status_view

log = logging.getLogger("tally.api")


@dataclass
class Core:
    """What the API reads: passed in, never global."""

    settings: Settings
    catalog: Catalog
    processor: Processor
    #: SHA-256 of the token in ``run/cli.token``, which lets the local CLI in.
    local_token_hash: str = ""
    #: How long reports took, by kind (for /metrics).
    report_durations: Durations = field(default_factory=lambda: Durations(REPORT_BUCKETS))
    #: Where report and API queries run (tally.query_pool).
    queries: QueryPool = field(init=False)

    def __post_init__(self) -> None:
        self.queries = QueryPool(self.processor.store, slots=self.settings.query_slots,
                                 timeout=self.settings.query_timeout)  # fmt: skip

    @property
    def reader(self) -> LogReader:
        return self.processor.reader

    def processor_state(self) -> dict[str, Any]:
        progress = self.processor.progress
        return {
            "error": self.processor.error.to_json() if self.processor.error else None,
            "waiting_for_ingest": self.processor.waiting_for_ingest,
            "batches": progress.batches,
            "records": progress.records,
            "applied": progress.applied,
            "duplicates": progress.duplicates,
            "rejected": dict(progress.rejected),
            "last_batch_seconds": round(progress.last_batch_seconds, 4),
        }


def _authorise(request: Request, *, local_only: bool = False) -> Core:
    """The core, for a valid operator token (``local_only``: only the token
    that the server left for the CLI on its own machine)."""
    return _operator(request, local_only=local_only)[0]


def _operator(request: Request, *, local_only: bool = False) -> tuple[Core, str]:
    """The core and who acts, as the audit log names them (tally.audit), for
    a handler that changes something."""
    core: Core = request.app.state.core
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send an operator token: Authorization: Bearer TOKEN")
    digest = hashlib.sha256(token.encode()).hexdigest()
    if core.local_token_hash and hmac.compare_digest(digest, core.local_token_hash):
        return core, audit.LOCAL_CLI
    if local_only:
        raise Unauthorized("only the tally CLI on the server's machine may do this",
                           code="local_only")  # fmt: skip
    found = core.catalog.authorise_token(token)  # 401 invalid/revoked_token; notes the use
    return core, audit.token_actor(found.name)


def _product(core: Core, request: Request) -> str:
    product: str = request.path_params["product"]
    require_product({p.name for p in core.catalog.products()}, product)
    return product


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
    core = _authorise(request)
    # Outside the pool: monitoring must answer while reports take every slot.
    return await _in_thread(
        request, core, status_view, core.reader, core.processor_state(), pooled=False
    )


async def person(request: Request) -> Response:
    core = _authorise(request)
    q = request.query_params
    return await _in_thread(
        request,
        core,
        person_view,
        _product(core, request),
        request.path_params["identity"],
        page=q.get("page"),
        page_size=q.get("page_size"),
    )


async def events(request: Request) -> Response:
    core = _authorise(request)
    q = request.query_params
    return await _in_thread(
        request,
        core,
        events_view,
        _product(core, request),
        event=q.get("event"),
        identity=q.get("identity"),
        time_from=q.get("from"),
        time_to=q.get("to"),
        page=q.get("page"),
        page_size=q.get("page_size"),
    )


async def rejects(request: Request) -> Response:
    core = _authorise(request)
    q = request.query_params
    return await _in_thread(
        request,
        core,
        rejects_view,
        _product(core, request),
        reason=q.get("reason"),
        page=q.get("page"),
        page_size=q.get("page_size"),
    )


async def replay(request: Request) -> Response:
    core, actor = _operator(request)
    product = _product(core, request)
    body = await _json_body(request)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("reason is a reject reason code", field="reason")
    result = await run_in_threadpool(core.processor.replay, product, reason)
    # Here, not in the thread: the catalog's one connection is the event loop's.
    core.catalog.record(actor, audit.REJECTS_REPLAY, product, {"reason": reason, **result})
    return JSONResponse(result)


async def report(request: Request) -> Response:
    core = _authorise(request)
    name = _product(core, request)
    body = await _json_body(request)
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
    core = _authorise(request)

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
    core = _authorise(request, local_only=True)

    def snapshot(cursor: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        made = snapshot_store(cursor, new_snapshot_path(core.settings))
        return {"path": str(made.path), "positions": made.positions, "records": made.records}

    # A whole store takes its time, and only the local CLI asks: outside the
    # pool, untimed; stopped if the CLI goes away (the copy is then removed).
    return await _in_thread(request, core, snapshot, pooled=False, timed=False)


async def tokens(request: Request) -> Response:
    core = _authorise(request)
    return JSONResponse({"tokens": [t.to_json() for t in core.catalog.tokens()]})


async def revoke_token(request: Request) -> Response:
    core, actor = _operator(request)
    body = await _json_body(request)
    every = body.get("all", False)
    if not isinstance(every, bool):
        raise InvalidInput("all is true or false", field="all")
    revoked = core.catalog.revoke_token(request.path_params["name"], every=every, actor=actor)
    return JSONResponse({"revoked": [t.to_json() for t in revoked]})


async def audit_log(request: Request) -> Response:
    core = _authorise(request)
    limit = audit.parse_limit(request.query_params.get("limit"))
    return JSONResponse({"entries": [e.to_json() for e in core.catalog.audit_entries(limit)]})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    return json_object(raw, "body", "the body") if raw.strip() else {}


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


def build_app(core: Core) -> Starlette:
    products = "/api/v1/products/{product}"
    app = Starlette(
        routes=[
            Route("/api/v1/status", status),
            Route(products + "/people/{identity:path}", person),
            Route(products + "/events", events),
            Route(products + "/rejects", rejects),
            Route(products + "/rejects/replay", replay, methods=["POST"]),
            Route(products + "/reports/{kind}", report, methods=["POST"]),
            Route("/api/v1/backup/snapshot", backup_snapshot, methods=["POST"]),
            Route("/api/v1/tokens", tokens),
            Route("/metrics", metrics),
            Route("/api/v1/tokens/{name:path}/revoke", revoke_token, methods=["POST"]),
            Route("/api/v1/audit", audit_log),
        ],
        exception_handlers={
            TallyError: _tally_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.core = core
    return app
