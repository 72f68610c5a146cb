"""The core's heap: large blocks go back to the system when they are freed.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB)
with a mapping of its own, unmapped when freed. But by default the threshold
is *dynamic*: each time such a block is freed, glibc raises the threshold to
its size (up to 32 MiB), so that every later block that size comes from the
arenas instead, where freeing it returns nothing to the system. One report
with a long series (the widest the limits allow: 84,006 days, a 3.5 MiB
answer and its 84,006 points) thus left the core 26 to 37 MiB larger for good,
measured four times on a server holding 20,000 events; with the threshold
fixed, 2 to 17 MiB (issue 14: memory returns within 10% after a hostile
request; ``bench/hostile.py --only metrics-widest``). DuckDB's own pages are
given back by its allocator's background threads (Store.limit_memory).

Elsewhere than on glibc (musl, macOS) there is no ``mallopt`` and this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("tally.server")

#: mallopt's parameter number (glibc's malloc.h) and the threshold it is held
#: at: glibc's own default, no longer raised.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Hold glibc's mmap threshold at :data:`MMAP_THRESHOLD`; whether it could."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused; freed large blocks may stay")
    return done
