"""The store (DESIGN §4): DuckDB tables that the processor alone writes."""

from tally.store.store import ApplyStats, Store

__all__ = ["ApplyStats", "Store"]
