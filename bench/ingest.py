"""Ingest benchmark: durable tracking calls per second, Tally next to nginx.

Starts a fresh Tally (``tally serve`` on a temporary data directory) and, when
nginx is installed, a reference nginx (``empty_gif`` with an access log), each
on a free port of 127.0.0.1, and drives both with ``wrk`` over keep-alive
connections, alternating, with the same realistic KISSmetrics URLs
(bench/ingest.lua). For each server it reports the median requests/s, p50 and
p99 latency, server CPU milliseconds per 1,000 requests and peak resident
memory (summed over the server's processes, sampled every 0.25 s; for Tally
also split into collectors and core), then the ratio of Tally's requests/s to
nginx's. After the runs it checks with ``GET /api/v1/status`` that Tally's log
holds at least as many records as wrk received 200s. ``--long`` instead runs
Tally alone for 60 s and prints each collector's memory every 5 s.

The machine must be otherwise idle for the figures to mean anything: before
each run the script waits (bounded) for it to be quiet, measures the CPU that
other programs used during the run ("other %"), and runs a disturbed run
again (``--retries``); the medians leave disturbed runs out.

Run ``bash bench/install.sh`` first (wrk, nginx), then, from the repository:

    .venv/bin/python bench/ingest.py            # or: make bench
    .venv/bin/python bench/ingest.py --long

``tally serve`` is the one the venv's Python imports, so ``PYTHONPATH=DIR/src``
measures another checkout. Everything runs on 127.0.0.1, every load run is
bounded in time, and only the processes this script started are stopped. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
LUA = HERE / "ingest.lua"
MIB = 1024 * 1024


# -- servers --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """A server process this script started, and its descendants."""

    name = ""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.root = psutil.Process(process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def role(self, process: psutil.Process) -> str:
        """Which part of the server a process is, for the CPU and memory split."""
        return self.name

    def alive(self) -> bool:
        self.check_alive()
        return True

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.process.poll() is not None:
            return
        descendants = self.processes()[1:]
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {timeout:.0f} s; killing it", file=sys.stderr)
            self.process.kill()
            self.process.wait(10)
        # Whatever the server started and left behind (only those processes).
        _, alive = psutil.wait_procs(descendants, timeout=5)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()


class Tally(Server):
    name = "tally"

    def __init__(self, workdir: Path, workers: int) -> None:
        self.data_dir = workdir / "tally-data"
        self.out = workdir / "tally.out"
        port = free_port()
        tally = Path(sys.executable).with_name("tally")
        command = [
            str(tally) if tally.exists() else "tally",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        with self.out.open("wb") as out, (workdir / "tally.err").open("wb") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        super().__init__(process, port)
        self.key = self.token = ""
        try:
            wait_for(self._announced, 60, "tally to start (see tally.err)")
        except Exception:
            self.stop()
            raise

    def _announced(self) -> bool:
        self.check_alive()
        text = self.out.read_text(errors="replace")
        key = re.search(r"API key:\s+(\S+)", text)
        token = re.search(r"Operator token[^:]*:\s+(\S+)", text)
        if "listening on" not in text or not key or not token:
            return False
        self.key, self.token = key.group(1), token.group(1)
        return True

    def role(self, process: psutil.Process) -> str:
        # The supervisor is the core (API, processor and store); a collector is
        # a process that holds a log stream; anything else (multiprocessing's
        # resource tracker) is "other".
        if process.pid == self.root.pid:
            return "core"
        return "collectors" if _log_stream(process) else "other"

    def collectors(self) -> dict[str, psutil.Process]:
        """The collector processes by the log stream each appends to."""
        found = {}
        for child in self.processes()[1:]:
            stream = _log_stream(child)
            if stream:
                found[stream] = child
        return dict(sorted(found.items()))

    def status(self) -> dict[str, object]:
        response = httpx.get(
            f"http://127.0.0.1:{self.port}/api/v1/status",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=300,
        )
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result


def _log_stream(process: psutil.Process) -> str:
    """The log stream whose lock the process holds open, if any."""
    with contextlib.suppress(psutil.Error):
        for f in process.open_files():
            path = Path(f.path)
            if path.name == "LOCK" and path.parent.parent.name == "log":
                return path.parent.name
    return ""


NGINX_CONF = """\
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ empty_gif; }}
    }}
}}
"""


class Nginx(Server):
    name = "nginx"

    def __init__(self, workdir: Path, binary: str, workers: int) -> None:
        tmp = workdir / "nginx"
        tmp.mkdir()
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, workers=workers))
        self.access_log = tmp / "access.log"
        command = [
            binary,
            "-p",
            str(tmp),
            "-e",
            str(tmp / "error.log"),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ]
        with (tmp / "stderr").open("wb") as err:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        super().__init__(process, port)
        try:
            wait_for(lambda: self.alive() and accepts(port), 30, "nginx to start")
        except Exception:
            self.stop()
            raise


# -- measuring ------------------------------------------------------------------------


class Sampler:
    """Samples a server's processes every ``interval`` seconds in a thread:
    CPU time per process (so that the difference is what the run cost) and
    resident memory, summed and per process."""

    def __init__(
        self,
        server: Server,
        interval: float = 0.25,
        on_sample: Callable[[Sampler, float], None] | None = None,
    ) -> None:
        self.server = server
        self.interval = interval
        self.on_sample = on_sample
        self.first_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.rss_by_pid: dict[int, int] = {}
        self.role_by_pid: dict[int, str] = {}
        self.peak_rss_by_role: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def sample(self) -> None:
        total = 0
        by_role: dict[str, int] = {}
        for process in self.server.processes():
            try:
                with process.oneshot():
                    cpu = process.cpu_times()
                    rss = process.memory_info().rss
            except psutil.Error:
                continue
            pid = process.pid
            if pid not in self.role_by_pid:
                self.role_by_pid[pid] = self.server.role(process)
            role = self.role_by_pid[pid]
            used = cpu.user + cpu.system
            self.first_cpu.setdefault(pid, used)
            self.last_cpu[pid] = used
            self.rss_by_pid[pid] = rss
            total += rss
            by_role[role] = by_role.get(role, 0) + rss
        self.peak_rss = max(self.peak_rss, total)
        for role, rss in by_role.items():
            self.peak_rss_by_role[role] = max(self.peak_rss_by_role.get(role, 0), rss)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            if self.on_sample is not None:
                self.on_sample(self, time.monotonic() - self.started)

    def __enter__(self) -> Sampler:
        self.started = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.last_cpu[pid] - self.first_cpu[pid] for pid in self.last_cpu)

    def cpu_seconds_by_role(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for pid, last in self.last_cpu.items():
            role = self.role_by_pid[pid]
            result[role] = result.get(role, 0.0) + last - self.first_cpu[pid]
        return result


@dataclass
class Run:
    server: str
    index: int  # 0 for the warm-up
    seconds: float
    requests: int
    ok: int
    non_2xx: int
    socket_errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float
    cpu_ms_per_1k: float
    peak_rss_mib: float
    wrk_cpu_s: float
    idle_pct: float
    other_pct: float
    quiet_wait_s: float
    #: The split of CPU and memory over the parts of the server (Tally: the
    #: collectors and the core, which runs the API and the processor).
    cpu_ms_per_1k_by_role: dict[str, float] = field(default_factory=dict)
    peak_rss_mib_by_role: dict[str, float] = field(default_factory=dict)


@dataclass
class Options:
    connections: int
    threads: int
    duration: int
    timeout: int
    quiet_wait: float
    quiet_threshold: float


def run_wrk(
    server: Server,
    key: str,
    opts: Options,
    workdir: Path,
    index: int,
    duration: int | None = None,
    on_sample: Callable[[Sampler, float], None] | None = None,
) -> Run:
    """One bounded wrk run against ``server``, measured."""
    seconds = duration or opts.duration
    wrk = shutil.which("wrk")
    assert wrk is not None
    command = [
        wrk,
        f"-t{opts.threads}",
        f"-c{opts.connections}",
        f"-d{seconds}s",
        f"--timeout={opts.timeout}s",
        "--latency",
        "-s",
        str(LUA),
        server.url,
        "--",
        key,
    ]
    out_path = workdir / f"wrk-{server.name}-{index}.out"
    # Write back what earlier runs left in the page cache now, not during this
    # run: nginx's access log is written but never synced, and the kernel wrote
    # it out ~30 s later, in the middle of a Tally run (whose syncs waited for
    # the disk: p99 60-90 ms in those runs).
    os.sync()
    quiet_wait_s = wait_quiet(opts.quiet_wait, opts.quiet_threshold) if opts.quiet_wait else 0.0
    server.check_alive()
    me = psutil.Process()
    self_before = sum(me.cpu_times()[:2])
    machine_before = psutil.cpu_times()
    with Sampler(server, on_sample=on_sample) as sampler, out_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + seconds + 60
        status, usage = 0, None
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            raise RuntimeError(f"wrk did not finish in {seconds + 60} s")
        process.returncode = os.waitstatus_to_exitcode(status)
    machine = psutil.cpu_times()
    self_cpu = sum(me.cpu_times()[:2]) - self_before
    busy = busy_seconds(machine) - busy_seconds(machine_before)
    total = sum(machine) - sum(machine_before)
    wrk_cpu = (usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
    idle_pct = 100.0 * (1 - busy / total) if total > 0 else 0.0
    # CPU that neither the server, wrk nor this script used: another program
    # competing for the machine makes the run unrepresentative.
    other = busy - sampler.cpu_seconds - wrk_cpu - self_cpu
    other_pct = max(0.0, 100.0 * other / total) if total > 0 else 0.0
    text = out_path.read_text(errors="replace")
    found = re.search(r"^WRK_JSON (.*)$", text, re.MULTILINE)
    if process.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {process.returncode}):\n{text}")
    result = json.loads(found.group(1))
    errors = result["errors"]
    requests = int(result["requests"])
    elapsed = result["duration_us"] / 1e6
    latency = result["latency_us"]
    cpu = sampler.cpu_seconds
    return Run(
        server=server.name,
        index=index,
        seconds=elapsed,
        requests=requests,
        ok=requests - errors["status"],
        non_2xx=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        rps=requests / elapsed,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        server_cpu_s=cpu,
        cpu_ms_per_1k=1000 * cpu / (requests / 1000) if requests else 0.0,
        peak_rss_mib=sampler.peak_rss / MIB,
        wrk_cpu_s=wrk_cpu,
        idle_pct=idle_pct,
        other_pct=other_pct,
        quiet_wait_s=quiet_wait_s,
        cpu_ms_per_1k_by_role={
            role: 1000 * used / (requests / 1000) if requests else 0.0
            for role, used in sorted(sampler.cpu_seconds_by_role().items())
        },
        peak_rss_mib_by_role={
            role: rss / MIB for role, rss in sorted(sampler.peak_rss_by_role.items())
        },
    )


def busy_seconds(times: Any) -> float:  # psutil's scputimes
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def wait_quiet(max_wait: float, threshold_pct: float) -> float:
    """Wait until the machine is nearly idle for one second (other programs
    sharing it would skew the run), at most ``max_wait`` seconds; the wait."""
    started = time.monotonic()
    while True:
        before = psutil.cpu_times()
        time.sleep(1.0)
        after = psutil.cpu_times()
        total = sum(after) - sum(before)
        busy_pct = 100.0 * (busy_seconds(after) - busy_seconds(before)) / total if total else 0.0
        waited = time.monotonic() - started
        if busy_pct <= threshold_pct or waited >= max_wait:
            return waited


# -- reporting ------------------------------------------------------------------------


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        wrk_version = subprocess.run(
            ["wrk", "-v"], check=False, capture_output=True, text=True, timeout=10
        ).stdout.split("\n")[0]
    return {
        "tally": tally_source(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
    }


def tally_source() -> str:
    """Which Tally ``tally serve`` will run (PYTHONPATH may point elsewhere):
    its version, its directory, and the commit when that is a git checkout."""

    def run(*command: str, cwd: Path | None = None) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                command, cwd=cwd, check=True, capture_output=True, text=True, timeout=30
            )
            return done.stdout.strip()
        return ""

    found = run(sys.executable, "-c", "import tally; print(tally.__version__, tally.__file__)")
    if not found:
        return "unknown"
    version, _, init = found.partition(" ")
    package = Path(init).parent
    described = f"{version} from {package}"
    commit = run("git", "rev-parse", "--short", "HEAD", cwd=package)
    if commit:
        dirty = run("git", "status", "--porcelain", "--", ".", cwd=package)
        described += f" at commit {commit}" + (" with uncommitted changes" if dirty else "")
    return described


def row(cells: list[str], widths: list[int]) -> str:
    pairs = enumerate(zip(cells, widths, strict=True))
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs)


RUN_HEAD = [
    "run",
    "req/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "non-2xx",
    "sock err",
    "srv CPU s",
    "CPU ms/1k",
    "peak RSS MiB",
    "wrk CPU s",
    "idle %",
    "other %",
]
RUN_WIDTHS = [13, 8, 6, 6, 6, 7, 8, 9, 9, 12, 9, 6, 7]
#: A run during which other programs used more than this share of the machine
#: is flagged: its figures say more about the neighbours than about the server.
DISTURBED_PCT = 5.0


def print_run_head() -> None:
    print(row(RUN_HEAD, RUN_WIDTHS))


def print_run(r: Run) -> None:
    cells = [
        f"{r.server} #{r.index}" if r.index else f"{r.server} warm-up",
        f"{r.rps:,.0f}",
        f"{r.p50_ms:.2f}",
        f"{r.p99_ms:.2f}",
        f"{r.max_ms:.1f}",
        str(r.non_2xx),
        str(r.socket_errors),
        f"{r.server_cpu_s:.1f}",
        f"{r.cpu_ms_per_1k:.1f}",
        f"{r.peak_rss_mib:.1f}",
        f"{r.wrk_cpu_s:.1f}",
        f"{r.idle_pct:.0f}",
        f"{r.other_pct:.0f}" + ("!" if r.other_pct > DISTURBED_PCT else ""),
    ]
    print(row(cells, RUN_WIDTHS), flush=True)


@dataclass
class Summary:
    server: str
    runs: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_1k: float
    peak_rss_mib: float
    rps_all: list[float] = field(default_factory=list)
    cpu_ms_per_1k_by_role: dict[str, float] = field(default_factory=dict)
    peak_rss_mib_by_role: dict[str, float] = field(default_factory=dict)


def disturbed(run: Run) -> bool:
    return run.other_pct > DISTURBED_PCT


def summarise(runs: list[Run], server: str) -> Summary | None:
    """The median of the measured runs, leaving out those other programs
    disturbed when an undisturbed run of the same index exists."""
    measured = [r for r in runs if r.server == server and r.index > 0]
    mine = []
    for index in sorted({r.index for r in measured}):
        tries = [r for r in measured if r.index == index]
        clean = [r for r in tries if not disturbed(r)]
        # Without a quiet try, the least disturbed one.
        mine.extend(clean or [min(tries, key=lambda r: r.other_pct)])
    if not mine:
        return None
    med = statistics.median
    roles = sorted({role for r in mine for role in r.cpu_ms_per_1k_by_role})
    return Summary(
        server=server,
        runs=len(mine),
        rps=med(r.rps for r in mine),
        p50_ms=med(r.p50_ms for r in mine),
        p99_ms=med(r.p99_ms for r in mine),
        cpu_ms_per_1k=med(r.cpu_ms_per_1k for r in mine),
        peak_rss_mib=max(r.peak_rss_mib for r in mine),
        rps_all=[round(r.rps) for r in mine],
        cpu_ms_per_1k_by_role={
            role: med(r.cpu_ms_per_1k_by_role.get(role, 0.0) for r in mine) for role in roles
        },
        peak_rss_mib_by_role={
            role: max(r.peak_rss_mib_by_role.get(role, 0.0) for r in mine) for role in roles
        },
    )


def print_summaries(summaries: list[Summary]) -> None:
    head = [
        "server",
        "median req/s",
        "p50 ms",
        "p99 ms",
        "CPU ms/1k req",
        "peak RSS MiB",
        "req/s of each run",
    ]
    lines = [
        [
            s.server,
            f"{s.rps:,.0f}",
            f"{s.p50_ms:.2f}",
            f"{s.p99_ms:.2f}",
            f"{s.cpu_ms_per_1k:.1f}",
            f"{s.peak_rss_mib:.1f}",
            ", ".join(f"{x:,}" for x in s.rps_all),
        ]
        for s in summaries
    ]
    widths = [max(len(c[i]) for c in [head, *lines]) for i in range(len(head))]
    print(row(head, widths))
    for line in lines:
        print(row(line, widths))
    for s in summaries:
        print_roles(s.server, s.cpu_ms_per_1k_by_role, s.peak_rss_mib_by_role)


def print_roles(server: str, cpu: dict[str, float], rss: dict[str, float]) -> None:
    if len(cpu) > 1:
        parts = [
            f"{role} {cpu[role]:.1f} ms CPU per 1k requests, peak RSS {rss.get(role, 0.0):.1f} MiB"
            for role in cpu
        ]
        print(f"  {server}: " + "; ".join(parts))


def warn_disturbed(runs: list[Run]) -> None:
    kept = []
    for key in sorted({(r.server, r.index) for r in runs if r.index > 0}):
        tries = [r for r in runs if (r.server, r.index) == key]
        if all(disturbed(r) for r in tries):
            kept.append(min(tries, key=lambda r: r.other_pct))
    if kept:
        names = ", ".join(f"{r.server} #{r.index} ({r.other_pct:.0f}%)" for r in kept)
        print(
            f"\nwarning: other programs used the machine during {names}, in the figures "
            "above for want of a quiet retry: they understate the server; run again on a "
            "quiet machine"
        )
    elif any(disturbed(r) for r in runs if r.index > 0):
        print(
            "\nnote: runs marked ! were disturbed by other programs and run again; "
            "the medians leave them out"
        )


def check_log(tally: Tally, runs: list[Run]) -> dict[str, object]:
    """The log must hold every record that was answered 200 (and no more
    than were sent: wrk may have had requests in flight when it stopped)."""
    mine = [r for r in runs if r.server == "tally"]
    ok = sum(r.ok for r in mine)
    non_2xx = sum(r.non_2xx for r in mine)
    errors = sum(r.socket_errors for r in mine)
    started = time.monotonic()
    status = tally.status()
    took = time.monotonic() - started
    log = status.get("log", {})
    assert isinstance(log, dict)
    records = int(log.get("records", -1))
    passed = records >= ok and non_2xx == 0
    verdict = "OK" if passed else "FAILED"
    print(
        f"\nlog check: {records:,} records in the log ({log.get('bytes', 0):,} bytes, "
        f"{log.get('streams')} streams); wrk got {ok:,} 200s, {non_2xx} non-2xx, "
        f"{errors} socket errors -> {verdict} (status answered in {took:.1f} s)"
    )
    pipeline = status.get("pipeline")
    if isinstance(pipeline, dict):
        # Not part of the check: how far the processor, which shares the
        # machine with the collectors, was behind the log when the load stopped.
        processor = pipeline.get("processor") or {}
        print(
            f"processor: {pipeline.get('lag_records', 0):,} records not yet applied "
            f"(oldest {pipeline.get('lag_seconds', 0)} s old); applied so far: "
            f"{processor.get('records', 0):,} records in {processor.get('batches', 0)} batches"
            + (f"; error: {processor['error']}" if processor.get("error") else "")
        )
    return {
        "records": records,
        "bytes": log.get("bytes"),
        "ok": ok,
        "non_2xx": non_2xx,
        "socket_errors": errors,
        "passed": passed,
        "pipeline": pipeline,
    }


# -- modes ----------------------------------------------------------------------------


def compare(
    args: argparse.Namespace, opts: Options, workdir: Path, stack: contextlib.ExitStack
) -> dict[str, object]:
    nginx_bin = None if args.no_nginx else (shutil.which("nginx") or _sbin("nginx"))
    tally = Tally(workdir, args.workers)
    stack.callback(tally.stop)
    servers: list[tuple[Server, str]] = [(tally, tally.key)]
    if nginx_bin:
        nginx = Nginx(workdir, nginx_bin, args.nginx_workers)
        stack.callback(nginx.stop)
        servers.append((nginx, tally.key))  # the same URLs, key included
    else:
        print("nginx is not installed (bash bench/install.sh): measuring Tally alone\n")
    print(
        f"tally on {tally.url} ({args.workers} collectors)"
        + (f", nginx on {servers[1][0].url} ({args.nginx_workers} workers)" if nginx_bin else "")
        + f"; wrk -t{opts.threads} -c{opts.connections} -d{opts.duration}s, "
        f"{args.runs} runs each, alternating\n"
    )

    runs: list[Run] = []
    print_run_head()
    if args.warmup:
        for server, key in servers:
            runs.append(run_wrk(server, key, opts, workdir, 0, duration=args.warmup))
            print_run(runs[-1])
            time.sleep(args.pause)
    for index in range(1, args.runs + 1):
        order = servers if index % 2 else list(reversed(servers))
        for server, key in order:
            for _ in range(1 + args.retries):
                runs.append(run_wrk(server, key, opts, workdir, index))
                print_run(runs[-1])
                time.sleep(args.pause)
                if not disturbed(runs[-1]):
                    break
    check = check_log(tally, runs)

    summaries = [s for s in (summarise(runs, "tally"), summarise(runs, "nginx")) if s]
    print()
    print_summaries(summaries)
    ratio = None
    if len(summaries) == 2:
        ratio = summaries[0].rps / summaries[1].rps
        print(
            f"\ntally / nginx (access log) req/s: {ratio:.2f} "
            f"({summaries[0].rps:,.0f} / {summaries[1].rps:,.0f})"
        )
    warn_disturbed(runs)
    return {
        "mode": "compare",
        "runs": [asdict(r) for r in runs],
        "summaries": [asdict(s) for s in summaries],
        "ratio": ratio,
        "log_check": check,
    }


def long_run(
    args: argparse.Namespace, opts: Options, workdir: Path, stack: contextlib.ExitStack
) -> dict[str, object]:
    tally = Tally(workdir, args.workers)
    stack.callback(tally.stop)
    collectors = tally.collectors()
    names = list(collectors)
    pids = {name: p.pid for name, p in collectors.items()}
    print(
        f"tally on {tally.url}: {len(names)} collectors ({', '.join(names)}); "
        f"wrk -t{opts.threads} -c{opts.connections} -d{args.long_duration}s\n"
        f"resident memory (MiB) of each collector, of the core (API and processor) "
        f"and of all Tally processes, every {args.every:g} s:"
    )
    head = "     t  " + "  ".join(f"{n:>7}" for n in [*names, "core", "total"])
    print(head)
    series: list[dict[str, float]] = []
    next_at = [0.0]

    def on_sample(sampler: Sampler, elapsed: float) -> None:
        if elapsed + 1e-6 < next_at[0]:
            return
        next_at[0] += args.every
        point = {"t": round(elapsed, 1)}
        for name in names:
            point[name] = sampler.rss_by_pid.get(pids[name], 0) / MIB
        point["core"] = sampler.rss_by_pid.get(tally.root.pid, 0) / MIB
        live = {p.pid for p in tally.processes()}
        point["total"] = sum(v for pid, v in sampler.rss_by_pid.items() if pid in live) / MIB
        series.append(point)
        print(
            f"{point['t']:6.1f}  "
            + "  ".join(f"{point[n]:7.1f}" for n in [*names, "core", "total"]),
            flush=True,
        )

    run = run_wrk(
        tally, tally.key, opts, workdir, 1, duration=args.long_duration, on_sample=on_sample
    )
    print()
    print_run_head()
    print_run(run)
    print_roles("tally", run.cpu_ms_per_1k_by_role, run.peak_rss_mib_by_role)
    warn_disturbed([run])
    check = check_log(tally, [run])
    growth = {}
    if len(series) >= 3:
        # From the first sample after the start-up (10 s of 60) to the last one.
        base = next((p for p in series if p["t"] >= args.long_duration / 6), series[0])
        last = series[-1]
        growth = {n: last[n] - base[n] for n in [*names, "core", "total"]}
        print(
            "RSS change from t={:.0f} s to t={:.0f} s: ".format(base["t"], last["t"])
            + ", ".join(f"{n} {v:+.1f} MiB" for n, v in growth.items())
        )
    return {
        "mode": "long",
        "run": asdict(run),
        "rss_mib": series,
        "growth_mib": growth,
        "log_check": check,
    }


def _sbin(name: str) -> str | None:
    path = Path("/usr/sbin") / name
    return str(path) if path.exists() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Durable ingest benchmark: Tally next to nginx (empty_gif + access log), "
        "both driven by wrk with realistic KISSmetrics URLs over keep-alive connections, "
        "on 127.0.0.1. Install wrk and nginx first: bash bench/install.sh.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--connections", "-c", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", "-t", type=int, default=1, help="wrk threads")
    parser.add_argument("--duration", "-d", type=int, default=10, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per server")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured warm-up per server (0: none)"
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    parser.add_argument("--workers", type=int, default=2, help="Tally collector processes")
    parser.add_argument("--nginx-workers", type=int, default=2, help="nginx worker processes")
    parser.add_argument("--no-nginx", action="store_true", help="measure Tally alone")
    parser.add_argument(
        "--timeout", type=int, default=5, help="wrk's per-request timeout in seconds"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=180,
        help="before each run, wait up to this many seconds for the machine to be idle "
        "(0: do not wait)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"run again (at most this many times) a run during which other programs used "
        f"more than {DISTURBED_PCT:g}%% of the machine",
    )
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=10,
        help="the machine counts as idle below this CPU use, in %% of all CPUs",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="instead: one long Tally run printing each collector's memory",
    )
    parser.add_argument("--long-duration", type=int, default=60, help="seconds of the --long run")
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds between memory lines in --long"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the machine, the runs and the summary to PATH",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, Tally's data, wrk output)",
    )
    args = parser.parse_args(argv)
    for name in (
        "connections",
        "threads",
        "duration",
        "runs",
        "workers",
        "nginx_workers",
        "long_duration",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration > 600 or args.long_duration > 600:
        parser.error("a run is at most 600 s")
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"\nkept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `bash bench/install.sh` first", file=sys.stderr)
        return 2
    opts = Options(
        args.connections,
        args.threads,
        args.duration,
        args.timeout,
        args.quiet_wait,
        args.quiet_threshold,
    )
    info = machine()
    print(
        f"{info['date']}: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Linux {info['kernel']}, Python {info['python']}, {info['wrk']}\n"
        f"tally {info['tally']}"
    )
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with workspace(args.keep) as workdir, contextlib.ExitStack() as stack:
            mode = long_run if args.long else compare
            result = mode(args, opts, workdir, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) for k, v in vars(args).items()}
        record = {"machine": info, "args": settings, **result}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    check = result.get("log_check")
    return 0 if isinstance(check, dict) and check.get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
