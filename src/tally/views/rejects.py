"""Rejected records (SPEC §7): listed with their reason, and replayed."""

from __future__ import annotations

import json
from typing import Any

from tally.store.contract import Cursor
from tally.views.common import iso_ns, paging

#: Rejects that replaying cannot change: the identity graph re-decides capped
#: aliases by itself, and a dropped property was never part of its record.
NOT_REPLAYABLE = ("alias_cap", "property_dropped")


def _scope(product: str | None, reason: str | None) -> tuple[str, list[Any]]:
    # A record with an unknown key belongs to no product yet: it is listed (and
    # replayed) with every product, since adding the key to any one may fix it.
    where, params = [], []
    if product is not None:
        where.append("(product = ? OR product IS NULL)")
        params.append(product)
    if reason:
        where.append("reason = ?")
        params.append(reason)
    return (" AND ".join(where) or "true"), params


def rejects_view(
    con: Cursor,
    product: str | None,
    *,
    reason: str | None = None,
    page: Any = 1,
    page_size: Any = 50,
) -> dict[str, Any]:
    page_number, size = paging(page, page_size)
    condition, params = _scope(product, reason)
    by_reason = dict(
        con.execute(
            f"SELECT reason, count(*) FROM rejects WHERE {_scope(product, None)[0]} "
            "GROUP BY reason ORDER BY reason",
            _scope(product, None)[1],
        ).fetchall()
    )
    (total,) = con.execute(
        f"SELECT count(*) FROM rejects WHERE {condition}",
        params,
    ).fetchone() or (0,)
    rows = con.execute(
        f"SELECT product, reason, path, recv_ns, stream, position, params, detail FROM rejects "
        f"WHERE {condition} ORDER BY recv_ns DESC, stream DESC, position DESC LIMIT ? OFFSET ?",
        [*params, size, (page_number - 1) * size],
    ).fetchall()
    return {
        "product": product,
        "total": total,
        "by_reason": by_reason,
        "page": page_number,
        "page_size": size,
        "items": [
            {
                "product": row_product,
                "reason": row_reason,
                "path": path,
                "received": iso_ns(recv_ns),
                "log": {"stream": stream, "position": position},
                "params": [list(p) for p in json.loads(row_params)],
                "detail": detail,
            }
            for row_product, row_reason, path, recv_ns, stream, position, row_params, detail in rows
        ],
    }


def replayable(con: Cursor, product: str | None, reason: str | None) -> list[tuple[str, int]]:
    """Log positions of the rejects that a replay re-applies."""
    condition, params = _scope(product, reason)
    rows = con.execute(
        f"SELECT DISTINCT stream, position FROM rejects WHERE {condition} "
        f"AND reason NOT IN {NOT_REPLAYABLE} ORDER BY stream, position",
        params,
    ).fetchall()
    return [(stream, position) for stream, position in rows]
