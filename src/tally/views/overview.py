"""A product at a glance: events per day, people, top events, pipeline health.

The days are calendar days in the product's time zone (SPEC §12), cut as the
reports cut them (tally.reports.sql), ending with today.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tally.log.reader import LogReader
from tally.reports.sql import DIALECT, interval_starts, iso_local
from tally.store.contract import Cursor
from tally.views.common import KNOWN_IDENTITIES
from tally.views.status import pipeline_view

DAYS = 30
TOP_EVENTS = 10


def overview_view(
    con: Cursor,
    product: str,
    timezone: str,
    reader: LogReader,
    data_dir: Path,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    tz = ZoneInfo(timezone)
    today = datetime.fromtimestamp(time.time() if now is None else now, tz).date()
    first = today - timedelta(days=DAYS - 1)
    start = int(datetime(first.year, first.month, first.day, tzinfo=tz).timestamp())
    tomorrow = today + timedelta(days=1)
    end = int(datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz).timestamp())
    starts = interval_starts(start, end, "day", timezone)
    join = DIALECT.bucket_join("e.time", starts)
    counted = dict(
        con.execute(
            f"SELECT b.bucket, count(*) FROM events e{join.text} "
            "WHERE e.product = ? AND e.time >= ? AND e.time < ? GROUP BY b.bucket",
            [*join.params, product, start, end],
        ).fetchall()
    )
    # Counted by key, then named (as views.names): 0.19 -> 0.05 s for 30 days
    # of ten million events.
    top = con.execute(
        "SELECT coalesce(n.display, e.event), e.c FROM (SELECT event, count(*) AS c "
        "FROM events WHERE product = ? AND time >= ? AND time < ? GROUP BY event) e "
        "LEFT JOIN names n ON n.product = ? AND n.kind = 'event' AND n.key = e.event "
        "ORDER BY e.c DESC, 1 LIMIT ?",
        [product, start, end, product, TOP_EVENTS],
    ).fetchall()
    row = con.execute(
        f"SELECT (SELECT count(*) FROM ({KNOWN_IDENTITIES}) WHERE product = ?) - "
        "(SELECT count(*) FROM identities WHERE product = ? AND person <> identity)",
        [product, product],
    ).fetchone()
    rejects = dict(
        con.execute(
            "SELECT reason, count(*) FROM rejects WHERE (product = ? OR product IS NULL) "
            "AND reason <> 'property_dropped' GROUP BY reason ORDER BY reason",
            [product],
        ).fetchall()
    )
    pipeline = pipeline_view(con, reader)
    disk = shutil.disk_usage(data_dir)
    return {
        "product": product,
        "timezone": timezone,
        "days": [{"start": iso_local(s, timezone), "events": counted.get(s, 0)} for s in starts],
        "events": sum(counted.values()),
        "people": int(row[0]) if row and row[0] is not None else 0,
        "top_events": [{"event": name, "events": count} for name, count in top],
        "health": {
            "lag_records": pipeline["lag_records"],
            "lag_seconds": pipeline["lag_seconds"],
            "rejects": rejects,
            "disk_free_bytes": disk.free,
            "disk_total_bytes": disk.total,
        },
    }
