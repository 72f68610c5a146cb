"""Worker processes that leave Ctrl-C to the process that started them and do not outlive it.

A pool's worker (tally.preparing's, tally.migrate.parallel's) waits for its
next task on a pipe whose writing end it holds as well, so it never reads the
end of it when its parent dies: a `tally rebuild`, `tally import` or
`tally serve` killed with SIGKILL (by the OOM killer, say) would leave its
workers running for good, each holding what it had prepared. A thread of the
worker looks once a second whether its parent is still the process that
started it, as the collectors do (tally.collector.worker), and ends the worker
when it is not: what a worker holds is never written by anyone but its parent.
"""

from __future__ import annotations

import os
import signal
import threading
import time

#: How often a worker looks whether its parent is still there.
PARENT_CHECK_SECONDS = 1.0


def end_with_parent(parent: int) -> None:
    """End this process soon after ``parent`` (its parent now) is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)  # nothing of this process's is anyone's to keep

    threading.Thread(target=watch, name="tally-parent-watch", daemon=True).start()


def start_pool_worker(parent: int) -> None:
    """What a pool's worker does first: leave Ctrl-C to ``parent``, which
    stops the pool, and end with it (:func:`end_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent(parent)
