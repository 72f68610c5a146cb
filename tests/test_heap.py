"""tally.heap: with the mmap threshold held, a freed large block leaves the
process (issue 14: memory returns after a long report). Each case runs in a
fresh interpreter, where the allocator's history is known."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt, /proc"
)

# An 8 MiB block is mapped and freed (by default glibc then raises its
# threshold to 8 MiB), then another is made and freed: what stays resident.
_PROGRAM = """
import sys
from tally import heap
if sys.argv[1] == "fixed":
    assert heap.fix_mmap_threshold()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
block = b"x" * (8 << 20)
del block
before = rss()
block = b"x" * (8 << 20)
del block
print(rss() - before)
"""


def _left_after_free(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_a_freed_large_block_is_given_back_with_the_threshold_held() -> None:
    assert _left_after_free("fixed") < 1 << 20


def test_without_it_glibc_keeps_the_block() -> None:
    # What the setting is for: glibc's dynamic threshold keeps the second block.
    assert _left_after_free("dynamic") >= 4 << 20
