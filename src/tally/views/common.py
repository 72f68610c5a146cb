"""Small pieces every view needs: paging, times, resolving a person."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from tally.errors import InvalidInput, NotFound

MAX_PAGE_SIZE = 1000


def iso(seconds: int | float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def iso_ns(ns: int) -> str:
    return (
        datetime.fromtimestamp(ns / 1e9, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def paging(page: Any, page_size: Any, *, default_size: int = 50) -> tuple[int, int]:
    try:
        page_number = int(page) if page not in (None, "") else 1
        size = int(page_size) if page_size not in (None, "") else default_size
    except (TypeError, ValueError) as exc:
        raise InvalidInput("page and page_size are whole numbers", field="page") from exc
    if page_number < 1:
        raise InvalidInput("page starts at 1", field="page")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size is 1 to {MAX_PAGE_SIZE}", field="page_size")
    return page_number, size


def require_product(products: set[str], product: str) -> None:
    if product not in products:
        raise NotFound(f"no product named {product!r}", field="product")


def resolve_person(con: duckdb.DuckDBPyConnection, product: str, identity: str) -> str:
    """The person an identity belongs to; 404 for identities no applied record names."""
    identity = identity.strip()
    row = con.execute(
        "SELECT person FROM identities WHERE product = ? AND identity = ?", [product, identity]
    ).fetchone()
    if row is not None:
        return str(row[0])
    known = con.execute(
        "SELECT 1 FROM known_identities WHERE product = ? AND identity = ?", [product, identity]
    ).fetchone()
    if known is None:
        raise NotFound(f"no person with identity {identity!r} in {product!r}", field="identity")
    return identity


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
