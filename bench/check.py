"""`tally check` benchmark: how long verifying a large log takes (issue 10).

Writes a log of ``--records`` realistic records on two streams (the processor
benchmark's generator) with a store that has applied all of it, then times, in
one run, after dropping nothing from the page cache for either:

1. **reference**: reading every segment and computing each segment's CRC-32 as
   one buffer (zlib), the floor for any frame-by-frame check;
2. **`tally check`** as a command (a subprocess: the whole CLI, the store's
   positions read, every frame's CRC and lengths checked).

    .venv/bin/python bench/check.py                      # 10M records (~7 min to write)
    .venv/bin/python bench/check.py --records 1000000

Everything is written under a temporary directory that is removed at the end
(``--keep DIR`` writes there instead and keeps it, to rerun quickly).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from processor import KEY, write_log

from tally.catalog import Catalog
from tally.settings import Settings
from tally.store import Store


def make_data(data_dir: Path, records: int) -> None:
    """A log of ``records`` records, and a store whose positions say all are
    applied (written directly: applying 10M records takes minutes and is the
    processor benchmark's business, not this one's)."""
    started = time.perf_counter()
    settings = Settings(data_dir=data_dir)
    Catalog(settings.catalog_path).create_product("bench", key=KEY)
    write_log(settings.log_dir, records)
    from tally.log import LogReader

    reader = LogReader(settings.log_dir)
    store = Store(settings.store_path)
    try:
        for stream in reader.streams():
            count, end = reader.count(stream)
            store.con.execute("INSERT INTO positions VALUES (?, ?, ?)", [stream, end, count])
    finally:
        store.close()
    print(f"wrote {records:,} records in {time.perf_counter() - started:.0f} s")


def reference(data_dir: Path) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    for path in sorted((data_dir / "log").glob("*/*.seg")):
        data = path.read_bytes()
        zlib.crc32(data)
        size += len(data)
    return time.perf_counter() - started, size


def run_check(data_dir: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tally", "check", "--data-dir", str(data_dir)],
        check=False,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tally check exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="records in the log")
    parser.add_argument("--keep", type=Path, help="write the data here and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="tally-bench-check-"))
    try:
        data_dir = work / "data"
        if not (data_dir / "store.duckdb").exists():
            make_data(data_dir, args.records)
        for run in range(2):  # the first also warms the page cache for both
            ref_seconds, size = reference(data_dir)
            check_seconds, output = run_check(data_dir)
            print(
                f"run {run + 1}: {size / 2**20:,.0f} MiB; reference (read + CRC-32 per segment) "
                f"{ref_seconds:.1f} s; tally check {check_seconds:.1f} s "
                f"({check_seconds / ref_seconds:.1f}x the reference)"
            )
        print(output.strip().splitlines()[-1])
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
