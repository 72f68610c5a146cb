"""A batch of parsed records as one Arrow table, the ``_kept`` that SQL spreads
over the store's tables.

The processor's budget is a few microseconds a record (issue 3: 100,000 records
a second on one core), so :meth:`Stage.add` only de-duplicates within the batch
and keeps the parsed record; the columns are built at the end with one
comprehension each, and names, properties and identities are set operations in
DuckDB over the whole batch.

:meth:`Stage.freeze` builds the table once the batch is read, which the
processor does in its preparing thread (no store access), while the batch
before is written; the store copies it into its staging database, and the
history de-duplication that follows leaves records out in SQL.
"""

from __future__ import annotations

import json
import struct
from itertools import accumulate

import pyarrow as pa

from tally.beacon import Beacon, Rejected
from tally.identity_graph import Order

REJECT = "reject"

_STRINGS = pa.string()
_INT = pa.int64()
#: A 16-byte de-duplication digest as two signed 64-bit integers, little-endian.
_HALVES = struct.Struct("<qq").unpack


def _listed(offsets: list[int], values: list[str]) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, _STRINGS))


def _mapped(offsets: list[int], keys: list[str], values: list[str]) -> pa.MapArray:
    return pa.MapArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(keys, _STRINGS), pa.array(values, _STRINGS)
    )


class Stage:
    def __init__(self) -> None:
        self.parsed: list[Beacon | Rejected] = []
        self.orders: list[Order] = []
        self.dedup: list[tuple[int, int, int]] = []  # (dedup time, hash high, hash low)
        # De-duplication within the batch (SPEC §4): of records with one key, only
        # the earliest in the total order stays, whichever was read first.
        self.keep: list[bool] = []
        self._first: dict[tuple[int, int, int], int] = {}
        self.duplicates = 0
        self._frozen: pa.Table | None = None

    def __len__(self) -> int:
        return len(self.parsed)

    def add(self, order: Order, parsed: Beacon | Rejected) -> None:
        digest = parsed.dedup_key if isinstance(parsed, Rejected) else parsed.dedup_key()
        dedup = (parsed.dedup_time, *_HALVES(digest))
        index = len(self.keep)
        self.parsed.append(parsed)
        self.orders.append(order)
        self.dedup.append(dedup)
        earlier = self._first.get(dedup)
        if earlier is None:
            self._first[dedup] = index
            self.keep.append(True)
            return
        self.duplicates += 1
        if order < self.orders[earlier]:
            self.keep[earlier] = False
            self._first[dedup] = index
            self.keep.append(True)
        else:
            self.keep.append(False)

    def drop(self, keys: set[tuple[str, int]]) -> None:
        """Leave out the records at these (stream, position)s: the store holds an
        earlier duplicate of each."""
        if keys:
            for index, (_, stream, position) in enumerate(self.orders):
                if (stream, position) in keys:
                    self.keep[index] = False

    def kept(self) -> list[int]:
        return [i for i, keep in enumerate(self.keep) if keep]

    def freeze(self) -> pa.Table:
        """The records kept within the batch, beacons and rejects in one table
        (built once: the history de-duplication that follows filters it in SQL)."""
        if self._frozen is None:
            kept = self.kept()
            beacons = [i for i in kept if not isinstance(self.parsed[i], Rejected)]
            rejects = [i for i in kept if isinstance(self.parsed[i], Rejected)]
            tables = [self._beacons(beacons)]
            if rejects:
                tables.append(self._rejects(rejects))
            self._frozen = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return self._frozen

    def _common(self, indices: list[int]) -> dict[str, pa.Array]:
        orders, dedup = self.orders, self.dedup
        return {
            "recv_ns": pa.array([orders[i][0] for i in indices], _INT),
            "stream": pa.array([orders[i][1] for i in indices], _STRINGS),
            "position": pa.array([orders[i][2] for i in indices], _INT),
            "dedup_time": pa.array([dedup[i][0] for i in indices], _INT),
            "h1": pa.array([dedup[i][1] for i in indices], _INT),
            "h2": pa.array([dedup[i][2] for i in indices], _INT),
        }

    def _beacons(self, indices: list[int]) -> pa.Table:
        items: list[Beacon] = [self.parsed[i] for i in indices]  # type: ignore[misc]
        n = len(items)
        offsets = list(accumulate((len(b.properties) for b in items), initial=0))
        keys = [p.key for b in items for p in b.properties]
        values = [p.value for b in items for p in b.properties]
        meta_offsets = list(accumulate((len(b.metadata) for b in items), initial=0))
        meta_keys = [k for b in items for k, _ in b.metadata]
        meta_values = [v for b in items for _, v in b.metadata]
        drop_offsets = list(accumulate((len(b.dropped) for b in items), initial=0))
        drops = [f"{name[:300]}: {why}" for b in items for name, why in b.dropped]
        nothing = pa.nulls(n, _STRINGS)
        return pa.table(
            {
                "kind": pa.array([b.kind for b in items], _STRINGS),
                "product": pa.array([b.product for b in items], _STRINGS),
                "identity": pa.array([b.identity for b in items], _STRINGS),
                "other": pa.array([b.other for b in items], _STRINGS),
                "event": pa.array([b.event_key for b in items], _STRINGS),
                "event_display": pa.array([b.event_display for b in items], _STRINGS),
                "time": pa.array([b.time for b in items], _INT),
                **self._common(indices),
                "reason": nothing,
                "path": nothing,
                "params": nothing,
                "prop_keys": _listed(offsets, keys),
                "prop_displays": _listed(offsets, [p.display for b in items for p in b.properties]),
                "prop_values": _listed(offsets, values),
                "metadata": _mapped(meta_offsets, meta_keys, meta_values),
                "drops": _listed(drop_offsets, drops),
            }
        )

    def _rejects(self, indices: list[int]) -> pa.Table:
        items: list[Rejected] = [self.parsed[i] for i in indices]  # type: ignore[misc]
        n = len(items)
        nothing = pa.nulls(n, _STRINGS)
        empty = [0] * (n + 1)
        return pa.table(
            {
                "kind": pa.array([REJECT] * n, _STRINGS),
                "product": pa.array([r.product for r in items], _STRINGS),
                "identity": nothing,
                "other": nothing,
                "event": nothing,
                "event_display": nothing,
                "time": pa.array([r.recv_ns // 1_000_000_000 for r in items], _INT),
                **self._common(indices),
                "reason": pa.array([str(r.reason) for r in items], _STRINGS),
                "path": pa.array([r.path for r in items], _STRINGS),
                "params": pa.array(
                    [json.dumps(r.params, ensure_ascii=False) for r in items], _STRINGS
                ),
                "prop_keys": _listed(empty, []),
                "prop_displays": _listed(empty, []),
                "prop_values": _listed(empty, []),
                "metadata": _mapped(empty, [], []),
                "drops": _listed(empty, []),
            }
        )
