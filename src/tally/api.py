"""The JSON API under ``/api/v1/`` (operator token required).

Every error leaves as ``{"error": {"code", "message", "field"?}}`` with the
status of its class in :mod:`tally.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tally import __version__
from tally.catalog import Catalog
from tally.errors import TallyError, Unauthorized
from tally.log.stats import LogStats
from tally.settings import Settings


@dataclass
class Core:
    """What the API reads: passed in, never global."""

    settings: Settings
    catalog: Catalog
    log_stats: LogStats


def _authorise(request: Request) -> None:
    core: Core = request.app.state.core
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an operator token: Authorization: Bearer TOKEN")
    if not core.catalog.verify_token(token.strip()):
        raise Unauthorized("that operator token is not valid", code="invalid_token")


def status_document(core: Core) -> dict[str, Any]:
    streams = core.log_stats.refresh()
    return {
        "version": __version__,
        "log": {
            "records": sum(s.records for s in streams),
            "bytes": sum(s.bytes for s in streams),
            "streams": len(streams),
            "per_stream": [
                {"name": s.name, "records": s.records, "bytes": s.bytes} for s in streams
            ],
        },
    }


async def status(request: Request) -> Response:
    _authorise(request)
    return JSONResponse(await run_in_threadpool(status_document, request.app.state.core))


async def _tally_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TallyError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def build_app(core: Core) -> Starlette:
    app = Starlette(
        routes=[Route("/api/v1/status", status)],
        exception_handlers={TallyError: _tally_error, HTTPException: _http_error},
    )
    app.state.core = core
    return app
