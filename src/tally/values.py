"""Property values: their size limit and when they are numbers (SPEC §2, §11)."""

from __future__ import annotations

import re

#: The largest value, in bytes of UTF-8 (SPEC §2: 8 KiB).
MAX_VALUE_BYTES = 8 * 1024

# SPEC §11, with two Python details made explicit: ``re.ASCII`` so that ``\d``
# is 0-9 only (not every Unicode digit), and ``fullmatch`` because ``$`` would
# also match before a trailing newline.
_NUMERIC = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def is_numeric(value: str) -> bool:
    """Whether numeric aggregations (sum, average, revenue) use this value."""
    return _NUMERIC.fullmatch(value) is not None


def fits(value: str) -> bool:
    """Whether a value is within :data:`MAX_VALUE_BYTES` of UTF-8."""
    # A character is at most 4 bytes of UTF-8, so short values need no encoding.
    return (
        len(value) <= MAX_VALUE_BYTES // 4
        or len(value.encode("utf-8", "surrogatepass")) <= MAX_VALUE_BYTES
    )
