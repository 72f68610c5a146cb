"""What the write side of every engine takes and gives (tally.store.contract):
a batch of log records, normalised but not written, and what applying it did.

Nothing here touches a store: :func:`prepare` is the pure half of applying
(SPEC §1 to §4: normalising, the reserved keys, names, times, the
de-duplication key, within-batch de-duplication), the same for every engine;
an engine's ``write`` does the rest against its history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tally.beacon import DEFAULT_BLOCKED, KeyLookup, parse_record
from tally.errors import Unavailable
from tally.identity_graph import Edge
from tally.log.reader import Entry
from tally.migrate.records import parse_import_reject
from tally.operations import parse_operator
from tally.store.stage import Stage


@dataclass
class Prepared:
    """A batch read and normalised but not written: :func:`prepare` makes it
    without touching the store, so that the processor prepares one batch while
    the store writes the one before (DuckDB releases the GIL while it works)."""

    entries: Sequence[Entry]
    keys: KeyLookup
    blocked: frozenset[str]
    stage: Stage
    revocations: list[tuple[str, Edge]]
    error: Exception | None = None  # a bug met while preparing: applied record by record
    #: Positions past damage that ends the batch's part of a stream (the reader
    #: skipped it): saved with the batch, so it is not read again.
    reach: dict[str, int] = field(default_factory=dict)
    #: The engine's handle of the batch once staged (DuckDB: its table in the
    #: staging database, Store.stage); None until then.
    staged: str | None = None


def prepare(
    entries: Sequence[Entry], keys: KeyLookup, *, blocked: frozenset[str] = DEFAULT_BLOCKED
) -> Prepared:
    """Normalise ``entries`` (SPEC §1 to §4) and build their table; never raises."""
    stage = Stage()
    revocations: list[tuple[str, Edge]] = []
    try:
        for entry in entries:
            record = entry.record
            order = (record.recv_ns, entry.stream, entry.position)
            if record.method == "OPERATOR":
                revocation = parse_operator(record)
                if revocation is not None:
                    revocations.append(
                        (revocation.product, Edge(revocation.a, revocation.b, order))
                    )
                continue
            parsed = parse_record(record, keys, blocked=blocked)
            if parsed is None:  # not a tracking call: perhaps a line an import could not read
                parsed = parse_import_reject(record, keys)
            if parsed is not None:
                stage.add(order, parsed)
        if len(stage):
            stage.freeze()
    except Exception as exc:  # a bug: Store.write applies the batch record by record
        return Prepared(entries, keys, blocked, Stage(), [], exc)
    return Prepared(entries, keys, blocked, stage, revocations)


@dataclass
class ApplyStats:
    """What applying a batch did: records read, applied, absorbed as
    duplicates (SPEC §4), and rejected by reason (SPEC §7)."""

    records: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


class StoreFailure(Unavailable):
    """The store could not write a batch; nothing of it was applied."""

    default_code = "store_failing"


#: Told how far a long conversion of the store is: (rows done, rows in all).
Progress = Callable[[int, int], None]
