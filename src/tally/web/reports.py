"""Report pages: ``/products/{product}/reports/{kind}?q=<the API's JSON body>``.

The page runs the report with :func:`tally.reports.run_report`, as the API
does, shows the chart, the numbers in a table, and the exact answer in
``<script type="application/json" id="report-data">``. A body the API would
refuse shows the API's message next to the field it names. Saved reports
(tally.saved) reopen the same page from their stored body.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from tally.accounts import Session, user_actor
from tally.api import people_csv_chunks, report_product, save_report
from tally.errors import InvalidInput, NotFound, TallyError
from tally.reports import KINDS, run_report
from tally.reports.query import People, json_object, parse
from tally.saved import SavedReport, SavedReports
from tally.web.pages import admin_form, product_of, signed_in
from tally.web.render import KIND_TITLES, Web, render
from tally.web.tables import TABLES, cell

#: What a report page starts from before anything is chosen.
STARTERS: dict[str, dict[str, Any]] = {
    "metrics": {"event": "", "measure": "people", "interval": "day"},
    "funnel": {"steps": [{"event": ""}, {"event": ""}], "mode": "strict"},
    "cohort": {"first_event": "", "return_event": "", "interval": "week"},
    "revenue": {"interval": "day"},
    "abtest": {"experiment": "", "conversion": ""},
    "path": {"start": "", "conversion": "", "direction": "first"},
    "people": {"conditions": [], "logic": "all", "columns": [], "page": 1, "page_size": 50},
}


#: The fields each report's form shows (``data-path``); an error naming
#: another field is shown by the definition's text box.
FORM_FIELDS: dict[str, set[str]] = {
    "metrics": {"event", "measure", "property", "interval", "segment.property",
                "segment.attribution"},
    "funnel": {"mode", "window", "segment.property", "segment.attribution"},
    "cohort": {"first_event", "return_event", "interval", "count", "buckets", "unit"},
    "revenue": {"interval", "churn_days"},
    "abtest": {"experiment", "conversion", "baseline"},
    "path": {"start", "conversion", "direction", "limit"},
    "people": {"logic", "page", "page_size"},
}  # fmt: skip
_STEP_EVENT = re.compile(r"steps\[(\d+)\]\.event")


def shown_at_field(kind: str, field: str | None, steps: int) -> bool:
    """Whether the form has an input for ``field`` (else the error goes by the text box)."""
    if field in ("from", "to") or field in FORM_FIELDS[kind]:
        return True
    step = _STEP_EVENT.fullmatch(field or "")
    return kind == "funnel" and step is not None and int(step.group(1)) < max(steps + 1, 3)


def _kind(request: Request) -> str:
    kind: str = request.path_params["kind"]
    if kind not in KINDS:
        raise NotFound(
            f"there is no report called {kind!r}; the reports are " + ", ".join(KINDS),
            field="kind",
        )
    return kind


def presets(timezone: str, today: date | None = None) -> list[dict[str, str]]:
    """Date ranges ``[from, to)`` in the product's time zone, as ISO dates."""
    today = today or datetime.now(ZoneInfo(timezone)).date()
    tomorrow = today + timedelta(days=1)
    month = today.replace(day=1)
    last_month = (month - timedelta(days=1)).replace(day=1)
    return [
        {"id": "today", "label": "Today", "from": today.isoformat(), "to": tomorrow.isoformat()},
        *({"id": f"last{n}", "label": f"Last {n} days",
           "from": (tomorrow - timedelta(days=n)).isoformat(), "to": tomorrow.isoformat()}
          for n in (7, 30, 90)),
        {"id": "this_month", "label": "This month", "from": month.isoformat(),
         "to": tomorrow.isoformat()},
        {"id": "last_month", "label": "Last month", "from": last_month.isoformat(),
         "to": month.isoformat()},
    ]  # fmt: skip


def report_url(product: str, kind: str, body: dict[str, Any]) -> str:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"/products/{product}/reports/{kind}?q={quote(text, safe='')}"


async def _answer(
    request: Request, web: Web, product: str, kind: str, body: dict[str, Any]
) -> dict[str, Any]:
    found = report_product(web.core, product)
    return await web.core.queries.run(
        request,
        lambda cursor: run_report(cursor, found, kind, body, d=web.core.dialect),
        all_threads=True,
    )


async def _page(request: Request, web: Web, session: Session, kind: str, q: str | None,
                saved: SavedReport | None = None) -> Response:  # fmt: skip
    product = product_of(web, request)
    body: dict[str, Any] = dict(STARTERS[kind])
    error: TallyError | None = None
    answer = None
    if saved is not None:
        body = saved.body
    elif q is not None:
        try:
            body = json_object(q, "q", "the report's definition (q)")
        except InvalidInput as exc:
            error = exc
    if error is None and (q is not None or saved is not None):
        try:
            answer = await _answer(request, web, product.name, kind, body)
        except InvalidInput as exc:
            error = exc
    if "from" not in body or "to" not in body:
        last30 = presets(product.timezone)[2]
        body = {"from": last30["from"], "to": last30["to"], **body}
    names = await web.names(request, product.name)
    table = TABLES[kind](answer) if answer is not None else None
    status = 400 if error is not None else 200
    turn = _page_turns(product.name, body, answer) if kind == "people" and answer else {}
    steps = body.get("steps")
    error_at_q = error is not None and not shown_at_field(
        kind, error.field, len(steps) if isinstance(steps, list) else 0
    )
    return render(
        request, "report.html", session=session, product=product.name, status=status,
        kind=kind, title=KIND_TITLES[kind], body=body,
        body_text=json.dumps(body, ensure_ascii=False, indent=2),
        error=error, error_at_q=error_at_q, answer=answer, table=table, names=names,
        presets=presets(product.timezone), timezone=product.timezone,
        url=report_url(product.name, kind, body), saved=saved, turn=turn,
    )  # fmt: skip


def _page_turns(product: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, str]:
    """The people search's previous and next pages, as report URLs."""
    page, size, total = answer["page"], answer["page_size"], answer["total"]
    turns = {}
    if page > 1:
        turns["Previous page"] = report_url(product, "people", {**body, "page": page - 1})
    if page * size < total:
        turns["Next page"] = report_url(product, "people", {**body, "page": page + 1})
    return turns


async def report(request: Request) -> Response:
    web, session = signed_in(request)
    return await _page(request, web, session, _kind(request), request.query_params.get("q"))


async def report_csv(request: Request) -> Response:
    """The report's table as CSV; a people search: every page of it, as the API's CSV."""
    web, _ = signed_in(request)
    kind = _kind(request)
    product = product_of(web, request)
    body = json_object(request.query_params.get("q") or "{}", "q", "the report's definition (q)")
    filename = f"{product.name}-{kind}.csv"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if kind == "people":
        query = parse(kind, body, report_product(web.core, product.name))
        assert isinstance(query, People)
        chunks = await web.core.queries.stream(
            request,
            lambda cursor: people_csv_chunks(cursor, query, web.core.dialect),
            all_threads=True,
        )
        return StreamingResponse(chunks, media_type="text/csv; charset=utf-8", headers=headers)
    table = TABLES[kind](await _answer(request, web, product.name, kind, body))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.csv_headers())
    writer.writerows([[_csv_cell(v) for v in row] for row in table.rows])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


def _csv_cell(value: Any) -> str:
    """A cell of the CSV: the answer's own number (no unit applied), empty for none."""
    return "" if value is None else cell(value)


# -- saved reports -------------------------------------------------------------------------


async def saved_list(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    found = SavedReports(web.core.catalog).list(product.name)
    return render(request, "saved_list.html", session=session, product=product.name,
                  saved=found)  # fmt: skip


def _saved_id(request: Request) -> int:
    given = request.path_params["id"]
    if not given.isdigit() or len(given) > 18:
        raise NotFound(f"there is no saved report {given!r}", field="id")
    return int(given)


async def saved_report(request: Request) -> Response:
    web, session = signed_in(request)
    product = product_of(web, request)
    found = SavedReports(web.core.catalog).get(product.name, _saved_id(request))
    return await _page(request, web, session, found.kind, None, saved=found)


async def save(request: Request) -> Response:
    web, session, form = await admin_form(request)
    product = product_of(web, request)
    kind = str(form.get("kind") or "")
    if kind not in KINDS:
        raise InvalidInput("kind is one of " + ", ".join(KINDS), field="kind")
    body = json_object(str(form.get("q") or "{}"), "q", "the report's definition (q)")
    made = save_report(web.core, product.name, str(form.get("name") or ""), kind, body,
                       user_actor(session.user.name))  # fmt: skip
    return RedirectResponse(f"/products/{product.name}/saved/{made.id}", 303)


async def delete_saved(request: Request) -> Response:
    web, session, _ = await admin_form(request)
    product = product_of(web, request)
    SavedReports(web.core.catalog).delete(product.name, _saved_id(request),
                                          actor=user_actor(session.user.name))  # fmt: skip
    return RedirectResponse(f"/products/{product.name}/saved", 303)
