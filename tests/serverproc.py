"""A real ``tally serve`` process on 127.0.0.1, for wire tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from tally.log import LogReader, Record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true, and return that;
    fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting until {what}"
        time.sleep(0.05)
    return result


class RunningServer:
    """Starts ``python -m tally serve`` and reads what it printed."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        port: int | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args)
        self.api_key = ""
        self.token = ""
        self.admin_password = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout = ""
        self._stderr_path = data_dir.parent / f"{data_dir.name}-stderr.txt"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> RunningServer:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        stderr = open(self._stderr_path, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tally", "serve", "--data-dir", str(self.data_dir),
             "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
             *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self.env,
        )  # fmt: skip
        stderr.close()
        assert self.process.stdout is not None
        lines = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"tally serve exited early:\n{self.stderr}")
            lines.append(line)
            if line.startswith("Tally ") and "listening on" in line:
                break
        else:
            raise RuntimeError("tally serve did not start in time")
        # The first-start banner follows the "listening" line.
        if not (self.data_dir / ".started-once").exists():
            for _ in range(12):  # up to the banner's last line, the status curl
                line = self.process.stdout.readline().decode()
                lines.append(line)
                if match := re.search(r"API key:\s+(\S+)", line):
                    self.api_key = match.group(1)
                if match := re.search(r"Operator token .*:\s+(\S+)", line):
                    self.token = match.group(1)
                if match := re.search(r"one-time password:\s+(\S+)", line):
                    self.admin_password = match.group(1)
                if "/api/v1/status" in line:
                    break
            (self.data_dir / ".started-once").write_text("")
        self.stdout = "".join(lines)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server not healthy")

    @property
    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        if self.process.stdout:
            self.process.stdout.close()
        return code

    def kill(self) -> None:
        """SIGKILL the supervisor and every collector, as a crash would."""
        assert self.process is not None
        pids = [*_children(self.process.pid), self.process.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()
        for pid in pids:  # wait until the collectors are gone and their locks free
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    def records(self) -> list[Record]:
        reader = LogReader(self.data_dir / "log")
        entries = [e for stream in reader.streams() for e in reader.read(stream)]
        return [e.record for e in sorted(entries, key=lambda e: e.record.recv_ns)]

    def wait_for_records(self, n: int, timeout: float = 10.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= n or time.monotonic() > deadline:
                if len(records) < n:
                    raise AssertionError(f"expected {n} records in the log, found {len(records)}")
                return records
            time.sleep(0.02)

    def status(self) -> dict[str, object]:
        response = httpx.get(
            self.base_url + "/api/v1/status", headers={"Authorization": f"Bearer {self.token}"}
        )
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result


def _children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
