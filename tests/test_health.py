"""What ``/healthz`` answers (tally.health, docs/operations.md): ``unavailable``
only when the log cannot take a record; ``degraded`` when tracking works but an
operator is needed; ``ok`` otherwise."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tally.health import PROCESSOR_FILE, verdict
from tally.settings import Settings


def processor(settings: Settings, **state: Any) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    state = {"updated_ns": time.time_ns(), "error": None, "lag_seconds": 0.0, **state}
    (settings.run_dir / PROCESSOR_FILE).write_text(json.dumps(state))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, defer_seconds=30)


def test_ok_when_the_log_writes_and_the_processor_keeps_up(settings: Settings) -> None:
    processor(settings, lag_seconds=2.5)
    assert verdict(settings, can_write=True, write_error=None, disk_low=False) == {
        "status": "ok",
        "reasons": [],
    }


def test_unavailable_only_when_the_log_cannot_take_a_record(settings: Settings) -> None:
    processor(settings)
    state = verdict(settings, can_write=False, write_error="[Errno 5] EIO", disk_low=True)
    assert state == {"status": "unavailable", "reasons": ["cannot write the log: [Errno 5] EIO"]}


ERROR = {"message": "StoreFailure: No space left on device", "since": "2026-12-06T10:00:00Z",
         "attempts": 3}  # fmt: skip
DEGRADED = {
    "low disk": ({}, True, "disk almost full"),
    "processor failing": ({"error": ERROR}, False, "cannot apply records since 2026-12-06"),
    "processor behind": ({"lag_seconds": 61.0}, False, "the processor is 61 s behind"),
    "processor silent": ({"updated_ns": time.time_ns() - 31 * 10**9}, False, "not reported"),
}


def test_degraded_after_a_failed_write_that_may_work_again(settings: Settings) -> None:
    """Traffic tells whether it works again: a load balancer keeps sending it."""
    processor(settings)
    found = verdict(settings, can_write=True, write_error="[Errno 5] EIO", disk_low=False)
    assert found == {"status": "degraded", "reasons": ["the last log write failed: [Errno 5] EIO"]}


@pytest.mark.parametrize(("state", "disk_low", "reason"), DEGRADED.values(), ids=DEGRADED.keys())
def test_degraded_while_tracking_works_but_an_operator_is_needed(
    settings: Settings, state: dict[str, Any], disk_low: bool, reason: str
) -> None:
    processor(settings, **state)
    found = verdict(settings, can_write=True, write_error=None, disk_low=disk_low)
    assert found["status"] == "degraded"
    [said] = found["reasons"]
    assert reason in said


def test_a_burst_the_processor_waits_out_is_not_behind(settings: Settings) -> None:
    """Lag up to twice --defer-seconds (at least a minute) is the pacing at work."""
    waiting = Settings(data_dir=settings.data_dir, defer_seconds=50)
    processor(waiting, lag_seconds=99.0)
    assert verdict(waiting, can_write=True, write_error=None, disk_low=False)["status"] == "ok"
    processor(waiting, lag_seconds=101.0)
    assert verdict(waiting, can_write=True, write_error=None, disk_low=False)["status"] == (
        "degraded"
    )
