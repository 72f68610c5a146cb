"""The JSON bodies of the reports (docs/reports.md), as pydantic models.

These models are the definition of a report's request: the API checks every
body against them (:func:`tally.reports.query.parse`), and the OpenAPI
document's schemas are generated from them (:mod:`tally.openapi`). What a
schema cannot say (a date that is a date, ``from`` before ``to``, how many
intervals a range makes, a name that is only spaces) is checked by ``parse``
as it turns a body into a query value.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, WithJsonSchema

from tally.validation import Body

Interval = Literal["hour", "day", "week", "month"]
StringOp = Literal["equals", "not_equals", "contains", "begins_with", "ends_with"]
PresenceOp = Literal["has_any_value", "has_no_value"]
NumberOp = Literal["gt", "gte", "lt", "lte"]

MAX_STEPS = 20
MAX_PAGE_SIZE = 1000
#: At most this many conditions, columns or filters in one list of a report: a
#: query's cost grows with them (measured on the landed server, 400
#: `has_no_value` conditions took 1.1 GB and 4 s; 3,000 did not finish).
MAX_ITEMS = 50
#: The longest funnel window: ten years, in seconds.
MAX_WINDOW = 10 * 366 * 86_400

#: An event's or a property's name, matched as its SPEC §2 key (one that is
#: only spaces has none: reports.query refuses it).
Name = Annotated[str, Field(min_length=1)]
#: The dates a report may name: an ISO 8601 date or timestamp (in the product's
#: time zone unless it has an offset) of the years 1970 to 2200. The form is
#: checked here, so the schema says exactly what is taken; reports.query then
#: refuses what is no day (February 30) or past 2200-01-01.
DATE_PATTERN = (
    r"^(19[7-9][0-9]|2[01][0-9][0-9]|2200)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
    r"(Z|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])?)?$"
)
When = Annotated[
    Annotated[str, Field(pattern=DATE_PATTERN)] | None,
    Field(
        description="An ISO 8601 date or timestamp, like 2026-01-31 or 2026-01-31T09:30:00 "
        "(the product's time zone unless it has an offset), from 1970-01-01 to 2200-01-01.",
        examples=["2026-01-01", "2026-01-08T09:30:00", "2026-01-08T14:30:00Z"],
    ),
]


class Filter(Body):
    """A test of one property value."""

    property: Name
    op: Literal[StringOp, PresenceOp, NumberOp]
    #: A string for the string tests, a number for gt/gte/lt/lte, none for the
    #: presence tests: which one depends on ``op`` (reports.query checks it).
    value: Annotated[Any, WithJsonSchema({"type": ["string", "number", "null"]})] = None


Filters = Annotated[list[Filter], Field(max_length=MAX_ITEMS)]


class Common(Body):
    """The fields every report has (docs/reports.md, "Common fields")."""

    from_: When = Field(None, alias="from")
    to: When = None
    unit: Literal["people", "times"] = "people"
    where: Filters = Field(default_factory=list)
    person_where: Filters = Field(default_factory=list)


class PeopleOnly(Common):
    """A report that counts people only."""

    unit: Literal["people"] = "people"


class MetricsSegment(Body):
    property: Name
    attribution: Literal["first_ever", "last_ever", "at_event"] = "first_ever"


class FunnelSegment(Body):
    property: Name
    attribution: Literal["first_ever", "last_ever", "at_step_1"] = "first_ever"


class Metrics(Common):
    event: Name
    measure: Literal["people", "times", "average_per_person", "sum", "average"] | None = None
    property: Name | None = None
    interval: Interval = "day"
    segment: MetricsSegment | None = None


class Step(Body):
    event: Name
    where: Filters = Field(default_factory=list)


def _step_tag(value: Any) -> str | None:
    return "<name>" if isinstance(value, str) else "<step>" if isinstance(value, dict) else None


StepItem = Annotated[
    Annotated[Name, Tag("<name>")] | Annotated[Step, Tag("<step>")],
    Discriminator(
        _step_tag,
        custom_error_type="step_tag",
        custom_error_message="is an event name or a step object",
    ),
]


class Funnel(PeopleOnly):
    steps: Annotated[list[StepItem], Field(min_length=2, max_length=MAX_STEPS)]
    mode: Literal["strict", "skip"] = "strict"
    window: Annotated[int | None, Field(ge=0, le=MAX_WINDOW)] = None
    segment: FunnelSegment | None = None


class Cohort(Common):
    first_event: Name
    return_event: Name
    interval: Interval = "day"
    count: Literal["every_time", "first_time"] = "every_time"
    buckets: Annotated[int, Field(ge=1, le=100)] = 12


class Revenue(PeopleOnly):
    interval: Interval = "day"
    churn_days: Annotated[int, Field(ge=1, le=3650)] = 30


class ABTest(PeopleOnly):
    experiment: Name
    conversion: Name
    baseline: str | None = None


class Path(PeopleOnly):
    start: Name
    conversion: Name
    direction: Literal["first", "last"] = "first"
    limit: Annotated[int, Field(ge=1, le=1000)] = 50


class Count(Body):
    op: Literal["at_least", "at_most", "exactly"]
    value: Annotated[int, Field(ge=0, le=10**9)]


class EventCondition(Body):
    type: Literal["event"]
    event: Name
    did: bool = True
    count: Count | None = None
    where: Filters = Field(default_factory=list)
    from_: When = Field(None, alias="from")
    to: When = None


class PropertyCondition(Filter):
    type: Literal["property"]


class IdentityCondition(Body):
    type: Literal["identity"]
    op: Literal["contains"] = "contains"
    value: Annotated[str, Field(min_length=1)]


class PropertyColumn(Body):
    type: Literal["property"]
    property: Name
    which: Literal["first", "last", "current"] = "current"


class EventColumn(Body):
    type: Literal["event"]
    event: Name
    which: Literal["first_time", "last_time", "count"] = "count"


def _by_type(*types: str) -> Any:
    """A union chosen by an object's ``type``, as ``<type>`` tags."""

    def tag(value: Any) -> str | None:
        kind = value.get("type") if isinstance(value, dict) else None
        return f"<{kind}>" if kind in types else None

    return Discriminator(
        tag,
        custom_error_type="type_tag",
        custom_error_message="is one of " + ", ".join(types),
    )


Condition = Annotated[
    Annotated[EventCondition, Tag("<event>")]
    | Annotated[PropertyCondition, Tag("<property>")]
    | Annotated[IdentityCondition, Tag("<identity>")],
    _by_type("event", "property", "identity"),
]
Column = Annotated[
    Annotated[PropertyColumn, Tag("<property>")] | Annotated[EventColumn, Tag("<event>")],
    _by_type("property", "event"),
]


class People(PeopleOnly):
    conditions: Annotated[list[Condition], Field(max_length=MAX_ITEMS)] = Field(
        default_factory=list
    )
    logic: Literal["all", "any", "in_order"] = "all"
    columns: Annotated[list[Column], Field(max_length=MAX_ITEMS)] = Field(default_factory=list)
    page: Annotated[int, Field(ge=1, le=10**9)] = 1
    page_size: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = 50


BODIES: dict[str, type[Common]] = {
    "metrics": Metrics,
    "funnel": Funnel,
    "cohort": Cohort,
    "revenue": Revenue,
    "abtest": ABTest,
    "path": Path,
    "people": People,
}
