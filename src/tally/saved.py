"""Saved reports: a name for a report's kind and body, per product, in the catalog.

The body is kept as the JSON the API takes, checked when it is saved (a body
the API would refuse is refused here too, with the same words), so that a
saved report always reopens as the page that saved it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tally import audit
from tally.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from tally.catalog import Catalog

MAX_NAME = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS saved_reports (
    id INTEGER PRIMARY KEY,
    product TEXT NOT NULL REFERENCES products(name),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SavedReport:
    id: int
    product: str
    name: str
    kind: str
    body: dict[str, Any]
    created_ns: int
    created_by: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "product": self.product, "name": self.name, "kind": self.kind,
                "body": self.body, "created": audit.iso(self.created_ns),
                "created_by": self.created_by}  # fmt: skip


def check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise InvalidInput("a saved report needs a name", field="name")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"a saved report's name is at most {MAX_NAME} characters",
                           field="name")  # fmt: skip
    return name


class SavedReports:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @property
    def _db(self) -> sqlite3.Connection:
        return self.catalog.connection

    def save(self, product: str, name: str, kind: str, body: dict[str, Any], *,
             actor: str) -> SavedReport:  # fmt: skip
        """Save a report whose kind and body the caller has checked
        (``tally.reports.parse``; not imported here, to keep DuckDB out of the
        collector processes, which read the catalog)."""
        self.catalog.product(product)
        name = check_name(name)
        now = time.time_ns()
        text = json.dumps(body, ensure_ascii=False, sort_keys=True)
        with self.catalog.changing() as db:
            cursor = db.execute(
                "INSERT INTO saved_reports (product, name, kind, body, created_ns, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (product, name, kind, text, now, actor),
            )
            report_id = int(cursor.lastrowid or 0)
            details = {"id": report_id, "name": name, "kind": kind}
            self.catalog.write_audit(db, actor, audit.SAVED_CREATE, product, details, now)
        return SavedReport(report_id, product, name, kind, body, now, actor)

    def list(self, product: str) -> list[SavedReport]:
        rows = self._db.execute(
            "SELECT id, product, name, kind, body, created_ns, created_by FROM saved_reports "
            "WHERE product = ? ORDER BY name, id",
            (product,),
        ).fetchall()
        return [SavedReport(i, p, n, k, json.loads(b), c, a) for i, p, n, k, b, c, a in rows]

    def get(self, product: str, report_id: int) -> SavedReport:
        row = self._db.execute(
            "SELECT id, product, name, kind, body, created_ns, created_by FROM saved_reports "
            "WHERE product = ? AND id = ?",
            (product, report_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"no saved report {report_id} in {product!r}", field="id")
        i, p, n, k, b, c, a = row
        return SavedReport(i, p, n, k, json.loads(b), c, a)

    def delete(self, product: str, report_id: int, *, actor: str) -> None:
        found = self.get(product, report_id)
        now = time.time_ns()
        with self.catalog.changing() as db:
            db.execute("DELETE FROM saved_reports WHERE id = ?", (report_id,))
            details = {"id": report_id, "name": found.name, "kind": found.kind}
            self.catalog.write_audit(db, actor, audit.SAVED_DELETE, product, details, now)
