"""Writing a small file whole or not at all: a new file beside it, renamed over it.

A reader sees the old content or the new, never half of either, and a process
killed half-way leaves only the ``.partial`` beside it. The partial's name
carries the writer's pid, so two processes writing the same file at once
(collectors marking a new log's format) never write into one partial.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, sync: bool = False) -> None:
    """Put ``data`` at ``path`` in one step; ``sync``: durable before the
    rename (the directory itself is not synced)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, path)
