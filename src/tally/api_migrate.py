"""The API's ways in and out for whole histories (docs/http-api.md).

``POST /api/v1/products/{product}/import`` writes a streamed body (JSON lines
or CSV, gzip or not) to an import stream of its own, as `tally import` does;
``GET /api/v1/products/{product}/export/{events|people}`` streams an export
(CSV, JSON lines or Parquet) as it is read from the store; ``POST
/api/v1/products/{product}/export/km`` writes KISSmetrics' layout into a folder
on the server's machine (only the local CLI may ask, as for a backup).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tally import api_models as models
from tally import audit
from tally.api_core import authorise, json_body, operator, product_of
from tally.errors import ClientGone, InvalidInput
from tally.migrate.bodies import body_format, body_items, body_lines
from tally.migrate.checkpoint import IMPORTING, ImportState, check_name, read_state
from tally.migrate.exports import KINDS, MEDIA_TYPES, check_export, event_filter, export_bytes
from tally.migrate.importer import check_resumable, product_key, run_import
from tally.migrate.kmexport import export_km
from tally.openapi import Operation
from tally.store.contract import Cursor
from tally.store.store import as_duckdb
from tally.validation import validated

#: What a body to import is sent as (JSON_TYPES and CSV_TYPES name the
#: aliases also taken).
BODY_TYPES = ("application/x-ndjson", "text/csv")
#: Body chunks waiting for the writing thread, at most.
_QUEUED_CHUNKS = 16


async def export(request: Request) -> Response:
    core = authorise(request)
    product = product_of(core, request)
    kind = request.path_params["kind"]
    q = validated(models.ExportQuery, request.query_params)
    fmt = q.format
    check_export(kind, fmt)  # a bad request is a 400 before any byte is sent
    f = event_filter(q.from_, q.to, q.event)

    # In a slot of the query pool (tally.query_pool), stopped if the client
    # leaves; untimed: a whole history, sorted, may take minutes to begin.
    chunks = await core.queries.stream(
        request,
        lambda cursor: export_bytes(as_duckdb(cursor, "an export"), product, kind, fmt, f),
        timed=False,
    )
    return StreamingResponse(
        chunks,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{product}-{kind}.{fmt}"'},
    )


async def export_km_folder(request: Request) -> Response:
    core = authorise(request, local_only=True)
    product = product_of(core, request)
    dest = validated(models.ExportKm, await json_body(request)).dest
    if not Path(dest).is_absolute():  # the server's working folder means nothing to a client
        raise InvalidInput(f"dest is an absolute path, not {dest!r}", field="dest")

    def run(cursor: Cursor) -> dict[str, Any]:
        done = export_km(as_duckdb(cursor, "an export"), product, Path(dest))
        return {"records": done.records, "files": len(done.files)}

    # As a backup's snapshot: only the local CLI asks, a whole product takes
    # its time (outside the pool, untimed), stopped if the CLI goes away.
    return JSONResponse(await core.queries.run(request, run, pooled=False, timed=False))


async def import_records(request: Request) -> Response:
    """Write the body's records to the log; how many were written. The body
    is read as it arrives and written in durable chunks from a thread, with a
    few chunks in between at most, so memory stays bounded."""
    core, actor = operator(request)
    product = product_of(core, request)
    fmt = body_format(request.headers.get("content-type", ""))
    gzipped = "gzip" in request.headers.get("content-encoding", "").lower()
    name = validated(models.ImportQuery, request.query_params).name or (
        time.strftime("http-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
    )
    check_name(name)
    key = product_key(core.catalog, product)
    log_dir = core.settings.log_dir
    fresh = ImportState(name, "http", f"POST /api/v1/products/{product}/import", product)
    state = check_resumable(read_state(log_dir, name), fresh)
    state.state = IMPORTING  # a name sent again: its stream takes this body too
    records, unreadable = state.records, dict(state.rejected)
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_CHUNKS)

    def received() -> Iterator[bytes]:
        while (chunk := chunks.get()) is not None:
            yield chunk

    def work() -> ImportState:
        items = body_items(fmt, name, body_lines(received(), gzipped))
        first = next(items, None)  # a CSV header is checked before anything is written
        head = [] if first is None else [first]
        return run_import(log_dir, state, key, itertools.chain(head, items))

    task = asyncio.ensure_future(run_in_threadpool(work))
    gone = False
    try:
        async for chunk in request.stream():
            if chunk and not await _hand_over(chunks, chunk, task):
                break
    except ClientDisconnect:
        # The client left (or the collector refused the rest of its body):
        # what arrived is written and durable all the same, as docs say.
        gone = True
    finally:
        await _hand_over(chunks, None, task)
        if not task.done():
            await asyncio.wait([task])
    done = task.result()  # the thread's error, if it failed (a CSV header: 400)
    answer = {
        "import": name,
        "stream": done.stream,
        "written": done.records - records,
        "unreadable": {k: v - unreadable.get(k, 0) for k, v in done.rejected.items()
                       if v > unreadable.get(k, 0)},
    }  # fmt: skip
    if answer["written"]:
        core.catalog.record(actor, audit.IMPORT_WRITE, product, answer)
    if gone:
        raise ClientGone(f"the body ended early; {answer['written']} records were written")
    return JSONResponse(
        {
            **answer,
            "note": "written to the log and durable; duplicates are absorbed, and the other "
            "rejects decided, when the processor applies them: see /rejects",
        }
    )


async def _hand_over(chunks: queue.Queue[bytes | None], chunk: bytes | None, task: Any) -> bool:
    """Put ``chunk`` in the queue once there is room; False if the writing
    thread has ended (failed) and takes no more."""
    while not task.done():
        try:
            chunks.put_nowait(chunk)
            return True
        except queue.Full:
            await asyncio.sleep(0.002)
    return False


def operations(products: str) -> list[Operation]:
    """This module's operations, under ``products`` (``/api/v1/products/{product}``)."""
    return [
        Operation("POST", products + "/import", import_records,
                  "Import records (JSON lines or CSV, gzip or not) through the log",
                  query=models.ImportQuery, body_media_types=BODY_TYPES,
                  answer=models.Imported),
        Operation("POST", products + "/export/km", export_km_folder,
                  "Write KISSmetrics' export layout to a folder on the server's machine",
                  body=models.ExportKm, answer=models.ExportedKm),
        Operation("GET", products + "/export/{kind}", export, "Export, streamed",
                  query=models.ExportQuery, media_types=tuple(MEDIA_TYPES.values()),
                  per_value=dict.fromkeys(KINDS, (None, None))),
    ]  # fmt: skip
