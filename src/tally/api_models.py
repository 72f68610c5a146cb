"""The JSON API's parameters, small bodies and answers, as pydantic models.

Parameters (with ``views.common.Page`` and ``audit.AuditQuery``, which the
CLI checks its options with too) and bodies are what the handlers in :mod:`tally.api` check
requests with (:func:`tally.validation.validated`); answers describe what the
views return. :mod:`tally.openapi` generates the OpenAPI document from them
(report bodies are in :mod:`tally.reports.bodies`), and the schemathesis test
holds the server to it: every answer must match.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tally.validation import Body, Params
from tally.views.common import Page

# -- parameters and bodies ----------------------------------------------------------------


class EventsQuery(Page):
    event: str | None = Field(None, description="Only events of this name (any case).")
    identity: str | None = Field(None, description="Only this person's events.")
    from_: str | None = Field(
        None, alias="from", description="ISO date or time (UTC unless it has an offset), "
        "or Unix seconds; inclusive."
    )  # fmt: skip
    to: str | None = Field(None, description="As `from`; exclusive.")


class RejectsQuery(Page):
    reason: str | None = Field(None, description="Only rejects of this reason code.")


class ExportQuery(Params):
    format: Literal["csv", "jsonl", "parquet"] = "csv"
    event: str | None = Field(None, description="Only events of this name (any case).")
    from_: str | None = Field(None, alias="from", description="As for events.")
    to: str | None = Field(None, description="As `from`; exclusive.")


class ImportQuery(Params):
    name: str | None = Field(
        None, description="The import's name (default: http-<time>-<random>); the same name "
        "again adds to that import."
    )  # fmt: skip


class ExportKm(Body):
    dest: Annotated[str, Field(min_length=1, description="A new or empty folder on the "
                               "server's machine, as an absolute path.")]  # fmt: skip


class Replay(Body):
    reason: str | None = Field(None, description="Only rejects of this reason code.")


class Revoke(Body):
    all: bool = Field(False, description="Revoke every token of that name, not just one.")


class NewProduct(Body):
    name: str = Field(description="1 to 64 letters, digits, '.', '_' or '-'.")
    timezone: str = Field("UTC", description="An IANA time zone, e.g. America/New_York.")
    key: str | None = Field(None, description="Its first API key; default: a new one.")


class ProductSettings(Body):
    timezone: str | None = Field(None, description="An IANA time zone.")
    revenue_property: str | None = Field(None, description="The revenue property (SPEC §8).")


class NewKey(Body):
    key: str | None = Field(None, description="Use this key; default: a new one.")


class NewToken(Body):
    name: str = Field("operator", description="Unique among active tokens.")


class NewSaved(Body):
    name: str = Field(description="What the report is called in the list.")
    kind: str = Field(description="metrics, funnel, cohort, revenue, abtest, path or people.")
    body: dict[str, Any] = Field(description="The report's body (docs/reports.md).")


class AliasRevocation(Body):
    a: str = Field(description="One identity of the alias.")
    b: str = Field(description="The other.")


class LiveQuery(Params):
    after: Annotated[
        str | None,
        Field(
            description="A cursor the feed gave (an event's `id`, `ready`'s `cursor`): go on "
            "from there (default: from now).",
            pattern=r"^[A-Za-z0-9_.-]+:[0-9]+(,[A-Za-z0-9_.-]+:[0-9]+)*$",
            max_length=1_000,  # encoded, well within the 16 KiB of a request's head
        ),
    ] = None
    seconds: Annotated[
        float,
        Field(
            ge=0.1,
            le=600,
            description="Close the stream after this long (an EventSource reconnects).",
        ),
    ] = 60.0


# -- answers --------------------------------------------------------------------------------


class Answer(BaseModel):
    """An answer: the fields named are always there; more may come."""

    model_config = ConfigDict(extra="allow")


class ErrorDetail(Answer):
    code: str
    message: str
    field: str | None = None


class Error(Answer):
    """Every error, whatever its status (docs/http-api.md)."""

    error: ErrorDetail


class Status(Answer):
    version: str
    log: dict[str, Any]
    pipeline: dict[str, Any]


class Listing(Answer):
    total: int
    page: int
    page_size: int
    items: list[dict[str, Any]]


class Events(Listing):
    product: str


class Rejects(Listing):
    product: str
    by_reason: dict[str, int]


class Person(Answer):
    product: str
    person: str
    display: str = Field(description='The identity to show (docs/reports.md, "People").')
    identity: str
    identities: list[str]
    properties: list[dict[str, Any]] | dict[str, Any]
    aliases: dict[str, Any]
    events: Listing


class Day(Answer):
    start: str
    events: int


class Overview(Answer):
    product: str
    timezone: str
    days: list[Day]
    events: int
    people: int
    top_events: list[dict[str, Any]]
    health: dict[str, Any]


class Name(Answer):
    name: str
    key: str
    count: int


class Names(Answer):
    product: str
    events: list[Name]
    properties: list[Name]


class ApiKey(Answer):
    key: str
    product: str
    created: str | None
    revoked: bool


class ProductAnswer(Answer):
    name: str
    timezone: str
    revenue_property: str
    created: str | None
    keys: list[ApiKey]


class Products(Answer):
    products: list[ProductAnswer]


class CreatedToken(Answer):
    name: str
    token: str = Field(description="The secret: shown this once.")


class Saved(Answer):
    id: int
    product: str
    name: str
    kind: str
    body: dict[str, Any]
    created: str
    created_by: str


class SavedList(Answer):
    saved: list[Saved]


class AliasRevoked(Answer):
    product: str
    a: str
    b: str


class Replayed(Answer):
    replayed: int
    applied: int
    duplicates: int
    rejected: dict[str, int]


class Token(Answer):
    name: str
    created: str | None
    last_used: str | None
    revoked: bool
    revoked_at: str | None


class Tokens(Answer):
    tokens: list[Token]


class Revoked(Answer):
    revoked: list[Token]


class AuditEntry(Answer):
    id: int
    time: str
    actor: str
    action: str
    target: str | None
    details: dict[str, Any] | None


class Audit(Answer):
    entries: list[AuditEntry]


class Point(Answer):
    start: str
    value: float | None


class Series(Answer):
    series: list[Point]
    total: float | None


class Segment(Series):
    value: Any


class MetricsAnswer(Series):
    segments: list[Segment] | None = None


class FunnelStep(Answer):
    event: str
    people: int
    conversion_from_previous: float | None
    conversion_from_first: float | None
    median_seconds_from_previous: float | None


class FunnelAnswer(Answer):
    steps: list[FunnelStep]
    segments: list[dict[str, Any]] | None = None


class CohortRow(Answer):
    start: str
    people: int
    values: list[float]
    percentages: list[float | None]
    cumulative: list[float]
    cumulative_percentages: list[float | None]


class CohortAnswer(Answer):
    cohorts: list[CohortRow]


class RevenuePoint(Answer):
    start: str
    revenue: float
    paying: int
    new: int
    churned: int
    average_per_customer: float | None


class RevenueAnswer(Answer):
    series: list[RevenuePoint]
    total_revenue: float
    paying: int
    lifetime_value: float | None


class Variant(Answer):
    name: str
    participants: int
    conversions: int
    rate: float | None
    improvement: float | None
    certainty: float | None


class ABTestAnswer(Answer):
    variants: list[Variant]
    baseline: str | None
    winner: str | None


class CommonPath(Answer):
    steps: list[str]
    people: int
    median_seconds: float | None


class PathAnswer(Answer):
    paths: list[CommonPath]
    converted: int


class Found(Answer):
    person: str
    display: str = Field(description='The identity to show (docs/reports.md, "People").')
    identities: list[str]
    columns: list[Any]


class PeopleAnswer(Answer):
    people: list[Found]
    total: int
    page: int
    page_size: int
    columns: list[str]


class Imported(Answer):
    import_: str = Field(alias="import")
    stream: str
    written: int
    unreadable: dict[str, int]
    note: str


class ExportedKm(Answer):
    records: int
    files: int


ANSWERS: dict[str, type[Answer]] = {
    "metrics": MetricsAnswer,
    "funnel": FunnelAnswer,
    "cohort": CohortAnswer,
    "revenue": RevenueAnswer,
    "abtest": ABTestAnswer,
    "path": PathAnswer,
    "people": PeopleAnswer,
}
