"""Settings of ``tally serve``: one table, read by the CLI and the docs test.

Precedence (STYLE §4): command-line flag > ``TALLY_*`` environment variable >
default. The resolved :class:`Settings` value is passed explicitly to whatever
needs it; nothing reads the environment behind its back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tally.beacon import DEFAULT_BLOCKED


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    help: str

    @property
    def envvar(self) -> str:
        return "TALLY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "./tally-data", "Directory of the log, the store and the catalog."),
    Setting("host", "127.0.0.1", "Address to listen on (0.0.0.0 for every interface)."),
    Setting("port", 8000, "Port for tracking, the API and the dashboard."),
    Setting("workers", None, "Collector processes; default: the number of CPUs."),
    Setting("timeout", 30.0, "Seconds before an idle or slow connection is closed."),
    Setting("backlog_mib", 64, "MiB of records waiting for fsync per collector before 503."),
    Setting(
        "max_connections",
        10_000,
        "Open client connections per collector; one more is answered 503 and closed.",
    ),
    Setting(
        "query_timeout",
        30.0,
        "Seconds a report or API query may run before it is stopped (answered 504).",
    ),
    Setting(
        "query_memory",
        "1GB",
        "DuckDB's memory for the store, shared by reports, API reads and the processor; "
        "a report that cannot fit, spilling included, is answered 507.",
    ),
    Setting(
        "query_spill",
        "4GB",
        "Disk that DuckDB may spill to past --query-memory (DATA_DIR/store.duckdb.tmp).",
    ),
    Setting(
        "query_concurrency",
        None,
        "Reports and API reads that run at once; others wait up to 5 s, then get 503. "
        "Default: the number of CPUs, at least 2.",
    ),
    Setting(
        "session_idle_minutes",
        120,
        "Minutes without a request after which a dashboard session ends.",
    ),
    Setting(
        "segment_mib",
        64,
        "MiB after which a collector seals its log segment and starts a new one.",
    ),
    Setting(
        "log_max_mib",
        64,
        "MiB after which DATA_DIR/tally.log is rotated to tally.log.1 (three old files are kept).",
    ),
    Setting(
        "defer_seconds",
        30.0,
        "While ingest saturates the machine, the processor waits until its oldest "
        "unapplied record is this old (0: never wait).",
    ),
    Setting(
        "catch_up_jobs",
        None,
        "Processes preparing the processor's batches while it is far behind "
        "(~1M records); default: one per CPU but one; 0: never.",
    ),
    Setting(
        "blocked_identities",
        ",".join(sorted(DEFAULT_BLOCKED)),
        "Comma-separated identities that are never a person (compared case-insensitively).",
    ),
    Setting(
        "max_identities_per_person",
        1000,
        "An alias that would give a person more identities than this is rejected.",
    ),
    Setting(
        "import_dir",
        None,
        "A folder watched for files to import (CSV, JSON lines, gzip too), in alphanumeric "
        "order once they stop changing; each is then moved to completed_imports/YEAR/MONTH/DAY/.",
    ),
    Setting("import_product", "default", "The product the files of --import-dir go into."),
    Setting(
        "max_import_bytes",
        "10GiB",
        "Largest body of POST /api/v1/products/{product}/import, streamed to the core as "
        "it arrives (every other request: 1 MiB); a larger one is answered 413.",
    ),
)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./tally-data")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # 0: one per CPU
    timeout: float = 30.0
    backlog_mib: int = 64
    max_connections: int = 10_000  # per collector
    query_timeout: float = 30.0  # tally.query_pool
    query_memory: int = 1_000_000_000  # bytes ("1GB", as DuckDB counts it): Store.limit_memory
    query_spill: int = 4_000_000_000  # bytes
    query_concurrency: int = 0  # 0: one per CPU, at least 2 (tally.query_pool)
    session_idle_minutes: float = 120.0  # tally.accounts
    segment_mib: int = 64  # tally.log.writer
    log_max_mib: int = 64  # tally.serverlog
    defer_seconds: float = 30.0  # tally.pacing
    catch_up_jobs: int | None = None  # None: tally.preparing.default_jobs(); 0: none
    blocked_identities: frozenset[str] = DEFAULT_BLOCKED
    max_identities_per_person: int = 1000
    import_dir: Path | None = None  # tally.migrate.watch
    import_product: str = "default"
    max_import_bytes: int = 10 * 1024**3  # a streamed import's body (tally.collector.protocol)
    max_head_bytes: int = 16 * 1024  # SPEC §1: request line + headers
    max_body_bytes: int = 1024 * 1024  # SPEC §1: POST body

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def query_slots(self) -> int:
        return self.query_concurrency or max(os.cpu_count() or 1, 2)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def core_socket(self) -> Path:
        return self.run_dir / "core.sock"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def local_token_path(self) -> Path:
        return self.run_dir / "cli.token"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.duckdb"


#: Units of a size as DuckDB reads them (``SET memory_limit``): KB is 1000 bytes, KiB 1024.
_UNITS = {
    "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes of a size such as ``1GB``, ``512MiB`` or ``0.5GB`` (DuckDB's units);
    ValueError for anything else."""
    number = text.strip().upper().rstrip("BIKMGT")
    unit = text.strip().upper()[len(number) :]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size like 1GB or 512MiB") from None
    if unit not in _UNITS or not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a size like 1GB or 512MiB")
    return int(value * _UNITS[unit])
