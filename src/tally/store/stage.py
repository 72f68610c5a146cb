"""A batch of parsed records as one Arrow table, the ``_batch`` that SQL spreads
over the store's tables.

The processor's budget is a few microseconds a record (issue 3: 100,000 records
a second on one core), so the Python side only appends each record's fields to
flat column lists; de-duplication, names, properties and identities are then set
operations in DuckDB over the whole batch.
"""

from __future__ import annotations

import json

import pyarrow as pa

from tally.beacon import Beacon, Rejected
from tally.identity_graph import Order

REJECT = "reject"

_STRINGS = pa.string()
_LIST = pa.list_(pa.string())


def _halves(digest: bytes) -> tuple[int, int]:
    return (
        int.from_bytes(digest[:8], "little", signed=True),
        int.from_bytes(digest[8:16], "little", signed=True),
    )


class Stage:
    def __init__(self) -> None:
        self.kind: list[str] = []
        self.product: list[str | None] = []
        self.identity: list[str | None] = []
        self.other: list[str | None] = []
        self.event: list[str | None] = []
        self.event_display: list[str | None] = []
        self.time: list[int] = []
        self.recv_ns: list[int] = []
        self.stream: list[str] = []
        self.position: list[int] = []
        self.dedup_time: list[int] = []
        self.h1: list[int] = []
        self.h2: list[int] = []
        self.reason: list[str | None] = []
        self.path: list[str | None] = []
        self.params: list[str | None] = []
        # Variable-length parts, flat with offsets (much cheaper than nested lists).
        self.prop_offsets: list[int] = [0]
        self.prop_keys: list[str] = []
        self.prop_displays: list[str] = []
        self.prop_values: list[str] = []
        self.meta_offsets: list[int] = [0]
        self.meta_keys: list[str] = []
        self.meta_values: list[str] = []
        self.drop_offsets: list[int] = [0]
        self.drops: list[str] = []
        # De-duplication within the batch (SPEC §4): of records with one key, only
        # the earliest in the total order stays, whichever was read first.
        self.keep: list[bool] = []
        self._first: dict[tuple[int, int, int], int] = {}
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self.kind)

    def add(self, order: Order, parsed: Beacon | Rejected) -> None:
        recv_ns, stream, position = order
        self.recv_ns.append(recv_ns)
        self.stream.append(stream)
        self.position.append(position)
        if isinstance(parsed, Rejected):
            h1, h2 = _halves(parsed.dedup_key)
            self.kind.append(REJECT)
            self.product.append(parsed.product)
            self.identity.append(None)
            self.other.append(None)
            self.event.append(None)
            self.event_display.append(None)
            self.time.append(recv_ns // 1_000_000_000)
            self.dedup_time.append(parsed.dedup_time)
            self.reason.append(str(parsed.reason))
            self.path.append(parsed.path)
            self.params.append(json.dumps(parsed.params, ensure_ascii=False))
        else:
            h1, h2 = _halves(parsed.dedup_key())
            self.kind.append(parsed.kind)
            self.product.append(parsed.product)
            self.identity.append(parsed.identity)
            self.other.append(parsed.other)
            self.event.append(parsed.event_key)
            self.event_display.append(parsed.event_display)
            self.time.append(parsed.time)
            self.dedup_time.append(parsed.dedup_time)
            self.reason.append(None)
            self.path.append(None)
            self.params.append(None)
            properties = parsed.properties
            if properties:
                keys, displays, values = self.prop_keys, self.prop_displays, self.prop_values
                for prop in properties:
                    keys.append(prop.key)
                    displays.append(prop.display)
                    values.append(prop.value)
            if parsed.metadata:
                for key, value in parsed.metadata:
                    self.meta_keys.append(key)
                    self.meta_values.append(value)
            for name, why in parsed.dropped:
                self.drops.append(f"{name[:300]}: {why}")
        self.h1.append(h1)
        self.h2.append(h2)
        dedup = (self.dedup_time[-1], h1, h2)
        index = len(self.keep)
        earlier = self._first.get(dedup)
        if earlier is None:
            self._first[dedup] = index
            self.keep.append(True)
        else:
            self.duplicates += 1
            if order < (self.recv_ns[earlier], self.stream[earlier], self.position[earlier]):
                self.keep[earlier] = False
                self._first[dedup] = index
                self.keep.append(True)
            else:
                self.keep.append(False)
        self.prop_offsets.append(len(self.prop_keys))
        self.meta_offsets.append(len(self.meta_keys))
        self.drop_offsets.append(len(self.drops))

    def drop(self, keys: set[tuple[str, int]]) -> None:
        """Leave out the records at these (stream, position)s: the store holds an
        earlier duplicate of each."""
        if not keys:
            return
        for index, (stream, position) in enumerate(zip(self.stream, self.position, strict=True)):
            if (stream, position) in keys:
                self.keep[index] = False

    def table(self) -> pa.Table:
        """The records that stay."""

        def listed(offsets: list[int], values: list[str]) -> pa.ListArray:
            return pa.ListArray.from_arrays(
                pa.array(offsets, pa.int32()), pa.array(values, _STRINGS)
            )

        def mapped(offsets: list[int], keys: list[str], values: list[str]) -> pa.MapArray:
            return pa.MapArray.from_arrays(
                pa.array(offsets, pa.int32()), pa.array(keys, _STRINGS), pa.array(values, _STRINGS)
            )

        table = pa.table(
            {
                "kind": pa.array(self.kind, _STRINGS),
                "product": pa.array(self.product, _STRINGS),
                "identity": pa.array(self.identity, _STRINGS),
                "other": pa.array(self.other, _STRINGS),
                "event": pa.array(self.event, _STRINGS),
                "event_display": pa.array(self.event_display, _STRINGS),
                "time": pa.array(self.time, pa.int64()),
                "recv_ns": pa.array(self.recv_ns, pa.int64()),
                "stream": pa.array(self.stream, _STRINGS),
                "position": pa.array(self.position, pa.int64()),
                "dedup_time": pa.array(self.dedup_time, pa.int64()),
                "h1": pa.array(self.h1, pa.int64()),
                "h2": pa.array(self.h2, pa.int64()),
                "reason": pa.array(self.reason, _STRINGS),
                "path": pa.array(self.path, _STRINGS),
                "params": pa.array(self.params, _STRINGS),
                "prop_keys": listed(self.prop_offsets, self.prop_keys),
                "prop_displays": listed(self.prop_offsets, self.prop_displays),
                "prop_values": listed(self.prop_offsets, self.prop_values),
                "properties": mapped(self.prop_offsets, self.prop_keys, self.prop_values),
                "metadata": mapped(self.meta_offsets, self.meta_keys, self.meta_values),
                "drops": listed(self.drop_offsets, self.drops),
            }
        )
        if all(self.keep):
            return table
        return table.filter(pa.array(self.keep, pa.bool_()))
