"""What every handler of the JSON API needs: the core it reads, who asks
(an operator token), the product in its path, and its JSON body.

:mod:`tally.api` and :mod:`tally.api_migrate` build on these.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tally import audit
from tally.catalog import Catalog
from tally.errors import Unauthorized
from tally.log.reader import LogReader
from tally.metrics import REPORT_BUCKETS, Durations
from tally.processor import Processor
from tally.query_pool import QueryPool
from tally.reports.query import json_object
from tally.reports.sql import Dialect
from tally.settings import Settings


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
    def dialect(self) -> Dialect:
        """The store's spelling of the reports' SQL (tally.store.contract)."""
        return self.processor.store.dialect

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


def authorise(request: Request, *, local_only: bool = False) -> Core:
    """The core, for a valid operator token (``local_only``: only the token
    that the server left for the CLI on its own machine)."""
    return operator(request, local_only=local_only)[0]


def operator(request: Request, *, local_only: bool = False) -> tuple[Core, str]:
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


def product_of(core: Core, request: Request) -> str:
    """The product named in the path, or NotFound: one product read from the
    catalog, not every product with its keys (1 + 2n queries) on each request."""
    product: str = request.path_params["product"]
    core.catalog.product(product)
    return product


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    return json_object(raw, "body", "the body") if raw.strip() else {}


def encoded(answer: Any) -> bytes:
    """An answer as JSON, encoded in the query's thread: a long answer (a
    daily series of 84,006 points is 4 MB of JSON) holds up neither the event
    loop nor the API's other requests while it is written. orjson writes one
    buffer, several times faster than the standard library."""
    return orjson.dumps(answer, option=orjson.OPT_NON_STR_KEYS)


def json_answer(body: bytes, status_code: int = 200) -> Response:
    """An answer :func:`encoded` already."""
    return Response(body, status_code=status_code, media_type="application/json")
