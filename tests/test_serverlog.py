"""``tally.log`` is rotated by the running server, and every process follows."""

from __future__ import annotations

import stat
from pathlib import Path

from serverproc import RunningServer, wait_until


def test_a_large_log_is_rotated_and_every_process_writes_to_the_new_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    log = data_dir / "tally.log"
    log.write_text("old line\n" * 200_000)  # 1.7 MiB, past --log-max-mib 1
    for index in (1, 2, 3):
        (data_dir / f"tally.log.{index}").write_text(f"rotated before, number {index}\n")

    server = RunningServer(data_dir, extra_args=["--log-max-mib", "1"]).start()
    try:
        wait_until(lambda: "rotated tally.log" in log.read_text(), 10, "tally.log is rotated")
    finally:
        assert server.stop() == 0

    # The old files moved one place along; the oldest is gone.
    first = (data_dir / "tally.log.1").read_text()
    assert first.startswith("old line\n")
    assert (data_dir / "tally.log.2").read_text() == "rotated before, number 1\n"
    assert (data_dir / "tally.log.3").read_text() == "rotated before, number 2\n"
    assert not (data_dir / "tally.log.4").exists()
    # The collectors (other processes) reopened the new file: their last lines are there.
    fresh = log.read_text()
    assert "collector 0 stopped" in fresh
    assert "collector 1 stopped" in fresh
    assert "rotated tally.log" in fresh
    assert "collector 0 stopped" not in first
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_small_log_is_left_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = RunningServer(data_dir, extra_args=["--log-max-mib", "1"]).start()
    assert server.stop() == 0
    assert "listening" in (data_dir / "tally.log").read_text()
    assert not (data_dir / "tally.log.1").exists()
