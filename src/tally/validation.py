"""Requests checked against their pydantic definitions, errors as Tally's own.

The models that validate a request (a report's body, an endpoint's query
parameters) are also what the OpenAPI document is generated from
(:mod:`tally.openapi`), so the contract and the checks cannot drift apart.
What fails is one :class:`InvalidInput` naming the field the way a user writes
it (``steps[1].where[0].op``) with a sentence in the docs' words.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from tally.errors import InvalidInput

#: A union's members are tagged with names in angle brackets (reports.bodies):
#: pydantic puts the tag in an error's location, where no field has it, so
#: that the location alone says which field is at fault.
TAG_PREFIX = "<"


class Body(BaseModel):
    """A JSON body: strict (``"5"`` is not a number, ``true`` not 1), unknown
    fields ignored (a newer client may send more)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Params(BaseModel):
    """Query parameters: text converted to the type asked (``page=2``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any) -> M:
    """``data`` as a ``model``, or the first thing wrong with it as InvalidInput."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc.errors()[0]) from None


def invalid(error: ErrorDetails) -> InvalidInput:
    field = field_name(error["loc"])
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "literal_error":
        options = [o.strip("' ") for o in str(ctx["expected"]).replace(" or ", ", ").split(",")]
        message = "is one of " + ", ".join(options) if len(options) > 1 else (
            f"can only be {options[0]} here")  # fmt: skip
    elif kind == "type_tag":  # a union chosen by its "type" (a people condition, a column)
        if isinstance(given, dict):
            field, message = f"{field}.type", str(error["msg"])
        else:
            message = f"is a JSON object whose type {error['msg']}"
    elif kind in ("too_long", "too_short"):
        n = ctx["actual_length"]
        items = f"has {n:,} item{'' if n == 1 else 's'}"
        message = f"{items}; the limit is {ctx['max_length']:,}" if kind == "too_long" else (
            f"{items}; it needs at least {ctx['min_length']:,}")  # fmt: skip
    else:
        message = _PHRASES.get(kind, "{msg}").format(msg=error["msg"], **ctx)
    return InvalidInput(f"{field or 'the body'} {message}", field=field or "body")


def field_name(loc: tuple[int | str, ...]) -> str:
    """``("steps", 1, "<step>", "event")`` as ``steps[1].event``."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not part.startswith(TAG_PREFIX):
            name += f".{part}" if name else part
    return name


_PHRASES = {
    "missing": "is required",
    "string_type": "is a string",
    "string_too_short": "is a non-empty string",
    # Only dates have a pattern (reports.bodies.DATE_PATTERN).
    "string_pattern_mismatch": "is an ISO date or timestamp from 1970-01-01 to 2200-01-01, "
    "like 2026-01-31 or 2026-01-31T09:30:00",
    "string_too_long": "is at most {max_length:,} characters",
    "int_type": "is a whole number",
    "int_from_float": "is a whole number",
    "float_type": "is a number",
    "bool_type": "is true or false",
    "list_type": "is a list",
    "model_type": "is a JSON object",
    "dict_type": "is a JSON object",
    "greater_than_equal": "is at least {ge}",
    "less_than_equal": "is at most {le}",
    "finite_number": "is a finite number",
    "int_parsing": "is a whole number",
    "float_parsing": "is a number",
    "bool_parsing": "is true or false",
}
