"""Operator records: changes an operator makes that go through the log.

An alias revocation (SPEC §5, beyond KISSmetrics) is appended to the operator
stream ``op`` like any tracking call, so that the store stays a function of the
log: ``tally rebuild`` replays it in its place in the total order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from tally.errors import InvalidInput
from tally.log.record import Record, encode_record
from tally.log.writer import SegmentWriter

OPERATOR_STREAM = "op"
REVOKE_ALIAS_PATH = "/alias/revoke"


@dataclass(frozen=True, slots=True)
class Revocation:
    product: str
    a: str
    b: str


def revocation_record(revocation: Revocation, *, now_ns: int | None = None) -> Record:
    query = urlencode({"product": revocation.product, "a": revocation.a, "b": revocation.b})
    return Record(
        method="OPERATOR",
        path=REVOKE_ALIAS_PATH,
        query=query.encode(),
        body=b"",
        recv_ns=time.time_ns() if now_ns is None else now_ns,
    )


def parse_operator(record: Record) -> Revocation | None:
    if record.method != "OPERATOR" or record.path != REVOKE_ALIAS_PATH:
        return None
    params = dict(parse_qsl(record.query.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        return Revocation(params["product"], params["a"].strip(), params["b"].strip())
    except KeyError:
        return None


def append_operator_record(log_dir: Path, record: Record) -> int:
    """Append durably to the operator stream; the record's position."""
    writer = SegmentWriter(log_dir / OPERATOR_STREAM)
    try:
        position = writer.position
        writer.write_durable(encode_record(record))
        return position
    finally:
        writer.close()


def revoke_alias(log_dir: Path, product: str, a: str, b: str) -> Revocation:
    a, b = a.strip(), b.strip()
    if not a or not b:
        raise InvalidInput("both identities are needed", field="identity")
    if a == b:
        raise InvalidInput("an identity is always its own person", field="identity")
    revocation = Revocation(product, a, b)
    append_operator_record(log_dir, revocation_record(revocation))
    return revocation
