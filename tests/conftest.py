from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serverproc import RunningServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real ``tally serve`` (two collectors) on a free port of 127.0.0.1.

    On teardown it must stop cleanly on SIGTERM, with no traceback in its output.
    """
    running = RunningServer(tmp_path / "data").start()
    yield running
    code = running.stop()
    assert code == 0, running.stderr
    assert "Traceback" not in running.stderr, running.stderr
