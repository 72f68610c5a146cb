"""How the pipeline is doing: the log, the processor's lag, what the store holds."""

from __future__ import annotations

import time
from typing import Any

from tally import __version__
from tally.log.damage import Quarantine
from tally.log.reader import LogReader
from tally.store.contract import Cursor
from tally.views.common import KNOWN_IDENTITIES


def pipeline_view(con: Cursor, reader: LogReader, *, now_ns: int | None = None) -> dict[str, Any]:
    """Per stream: where the log ends, where the store is, and how far behind.

    Reads only the frame headers of the records not applied yet, so it costs
    little however long the log."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    applied = {
        stream: (position, records)
        for stream, position, records in con.execute(
            "SELECT stream, position, records FROM positions"
        ).fetchall()
    }
    streams = []
    for stream in reader.streams():
        position, records = applied.get(stream, (0, 0))
        lag_records, oldest_ns = reader.backlog(stream, position)
        streams.append(
            {
                "name": stream,
                "log_position": reader.durable(stream),
                "applied_position": position,
                "applied_records": records,
                "records": records + lag_records,
                "lag_records": lag_records,
                "lag_seconds": round(max(now_ns - oldest_ns, 0) / 1e9, 3) if oldest_ns else 0.0,
            }
        )
    return {
        "streams": streams,
        "lag_records": sum(s["lag_records"] for s in streams),
        "lag_seconds": max((s["lag_seconds"] for s in streams), default=0.0),
    }


def store_view(con: Cursor) -> dict[str, Any]:
    def scalar(sql: str) -> int:
        row = con.execute(sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # People are the identities seen, less those merged into another (SPEC §5).
    people = scalar(f"SELECT count(*) FROM ({KNOWN_IDENTITIES})") - scalar(
        "SELECT count(*) FROM identities WHERE person <> identity"
    )
    rejects = dict(
        con.execute(
            "SELECT reason, count(*) FROM rejects WHERE reason <> 'property_dropped' "
            "GROUP BY reason ORDER BY reason"
        ).fetchall()
    )
    return {
        "events": scalar("SELECT count(*) FROM events"),
        "people": people,
        "property_values": scalar("SELECT count(*) FROM property_values"),
        "aliases": scalar("SELECT count(*) FROM aliases WHERE status = 'accepted'"),
        "duplicates": scalar("SELECT value FROM counters WHERE name = 'duplicates'"),
        "rejected": sum(rejects.values()),
        "rejects": rejects,
        "properties_dropped": scalar(
            "SELECT count(*) FROM rejects WHERE reason = 'property_dropped'"
        ),
    }


_DAMAGE_FIELDS = ("stream", "segment", "start", "end", "reason", "found_at", "file")


def status_view(
    con: Cursor,
    reader: LogReader,
    processor: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pipeline = pipeline_view(con, reader)
    streams = pipeline["streams"]
    return {
        "version": __version__,
        "log": {
            "records": sum(s["records"] for s in streams),
            "bytes": sum(s["log_position"] for s in streams),
            "streams": len(streams),
            "per_stream": [
                {"name": s["name"], "records": s["records"], "bytes": s["log_position"]}
                for s in streams
            ],
            # Damaged ranges met so far, kept in DATA_DIR/quarantine (tally.log.damage).
            "damage": [
                {key: report.get(key) for key in _DAMAGE_FIELDS}
                for report in Quarantine(reader.log_dir.parent, "").reports()
            ],
        },
        "pipeline": {**pipeline, "processor": processor},
        "store": store_view(con),
    }
