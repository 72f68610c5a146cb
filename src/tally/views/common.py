"""Small pieces every view needs: paging, times, resolving a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from tally.errors import InvalidInput, NotFound

MAX_PAGE_SIZE = 1000
MAX_PAGE = 10**9

#: Every identity an applied record names: the ``_p`` of events and property
#: sets, and both ends of aliases that the cap did not reject.
KNOWN_IDENTITIES = (
    "SELECT product, identity FROM known_identities "
    "UNION SELECT product, a FROM aliases WHERE status <> 'alias_cap' "
    "UNION SELECT product, b FROM aliases WHERE status <> 'alias_cap'"
)


def iso(seconds: int | float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def iso_ns(ns: int) -> str:
    return (
        datetime.fromtimestamp(ns / 1e9, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def paging(page: Any, page_size: Any, *, default_size: int = 50) -> tuple[int, int]:
    page_number = _whole(page, "page", 1, MAX_PAGE, default=1)
    size = _whole(page_size, "page_size", 1, MAX_PAGE_SIZE, default=default_size)
    return page_number, size


def _whole(value: Any, field: str, low: int, high: int, *, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is a whole number", field=field) from exc
    if not low <= number <= high:
        raise InvalidInput(f"{field} is {low} to {high}", field=field)
    return number


def require_product(products: set[str], product: str) -> None:
    if product not in products:
        raise NotFound(f"no product named {product!r}", field="product")


def resolve_person(con: duckdb.DuckDBPyConnection, product: str, identity: str) -> str:
    """The person an identity belongs to; 404 for identities that no applied
    record names (SPEC §11: one seen only in rejected records is unknown)."""
    identity = identity.strip()
    row = con.execute(
        f"SELECT EXISTS (SELECT 1 FROM ({KNOWN_IDENTITIES}) WHERE product = ? AND identity = ?), "
        "(SELECT person FROM identities WHERE product = ? AND identity = ?)",
        [product, identity, product, identity],
    ).fetchone()
    if row is None or not row[0]:
        raise NotFound(f"no person with identity {identity!r} in {product!r}", field="identity")
    return str(row[1] or identity)


def identities_of(con: duckdb.DuckDBPyConnection, product: str, person: str) -> list[str]:
    rows = con.execute(
        "SELECT identity FROM identities WHERE product = ? AND person = ? ORDER BY identity",
        [product, person],
    ).fetchall()
    return [r[0] for r in rows] or [person]


def parse_time(value: Any, field: str) -> int | None:
    """Unix seconds from an ISO date/timestamp (UTC unless it says otherwise) or a number."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    try:
        return int(float(text))
    except OverflowError as exc:
        raise InvalidInput(f"{field} is out of range: {text!r}", field=field) from exc
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(
            f"{field} is not an ISO date or timestamp: {text!r}", field=field
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
