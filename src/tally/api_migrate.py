"""The API's ways in and out for whole histories (docs/http-api.md, "Migration").

``GET /api/v1/products/{product}/export/{events|people}`` streams an export
(CSV, JSON lines or Parquet) as it is read from the store; ``POST
/api/v1/products/{product}/export/km`` writes KISSmetrics' layout into a folder
on the server's machine (only the local CLI may ask, as for a backup).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tally.api import _authorise, _json_body, _product
from tally.errors import InvalidInput
from tally.migrate.exports import MEDIA_TYPES, check_export, event_filter, export_bytes
from tally.migrate.kmexport import export_km


async def export(request: Request) -> Response:
    core = _authorise(request)
    product = _product(core, request)
    kind = request.path_params["kind"]
    q = request.query_params
    fmt = q.get("format", "csv")
    check_export(kind, fmt)  # a bad request is a 400 before any byte is sent
    f = event_filter(q.get("from"), q.get("to"), q.get("event"))

    def chunks() -> Iterator[bytes]:  # Starlette iterates it in a thread
        with core.processor.store.reading() as cursor:
            yield from export_bytes(cursor, product, kind, fmt, f)

    return StreamingResponse(
        chunks(),
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{product}-{kind}.{fmt}"'},
    )


async def export_km_folder(request: Request) -> Response:
    core = _authorise(request, local_only=True)
    product = _product(core, request)
    body = await _json_body(request)
    dest = body.get("dest")
    if not isinstance(dest, str) or not dest:
        raise InvalidInput("dest is the folder to write, on the server's machine", field="dest")

    def run() -> dict[str, Any]:
        with core.processor.store.reading() as cursor:
            done = export_km(cursor, product, Path(dest))
        return {"records": done.records, "files": len(done.files)}

    return JSONResponse(await run_in_threadpool(run))


def routes(products: str) -> list[Route]:
    """The routes of this module, under ``products`` (``/api/v1/products/{product}``)."""
    return [
        Route(products + "/export/km", export_km_folder, methods=["POST"]),
        Route(products + "/export/{kind}", export),
    ]
