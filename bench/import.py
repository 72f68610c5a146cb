"""Import and export benchmark (issue 13): a generated KISSmetrics export in, and out again.

Writes a KISSmetrics export of N records (``revisions/N.json`` of 250,000 lines:
events with four properties, property sets, aliases; a few octal escapes), then
measures, each on its own:

- parsing the export's lines (``orjson.loads`` alone, then the importer's
  per-line path, ``parse_line`` and ``frame``, and its block path,
  ``BlockFramer``, which ``tally import`` uses: the same log records);
- ``tally import km`` writing the records to the log (target: 200,000 records/s),
  with its worker processes (the default on this machine) and with ``--jobs 1``;
- with ``--apply``, the processor applying them (``tally rebuild``'s path), and
  the end-to-end rate from the start of the import to lag 0;
- with ``--apply``, ``tally export events`` as JSON lines and Parquet, and
  ``tally export km`` (target 200,000 records/s), with the process's peak memory.

Run from the repository: ``.venv/bin/python bench/import.py [--records N] [--apply]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tally.migrate.blocks import BlockFramer
from tally.migrate.kmjson import parse_line
from tally.migrate.records import frame

T0 = 1_700_000_000
EVENTS = ["Viewed Page", "Signed Up", "Logged In", "Billed", "Added to Cart", "Visited Site"]
PAGES = ["Home", "Pricing", "Sign Up", "Docs", "Blog", "Checkout"]
LINES_A_FILE = 250_000
KEY = "0123456789abcdef0123456789abcdef01234567"


def write_export(root: Path, records: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    revisions = root / "revisions"
    revisions.mkdir(parents=True)
    size = 0
    for n, start in enumerate(range(0, records, LINES_A_FILE), 1):
        out = []
        for i in range(start, min(start + LINES_A_FILE, records)):
            person = f"user{rng.randrange(records // 20 + 1)}"
            t = T0 + i // 10
            roll = rng.random()
            if roll < 0.02:
                line = json.dumps({"_p": person, "_t": t, "_p2": f"{person}@example.com"})
            elif roll < 0.12:
                line = json.dumps({"_p": person, "_t": t, "Plan": rng.choice(["free", "pro"])})
            else:
                line = json.dumps({"_p": person, "_t": t, "_n": rng.choice(EVENTS),
                                   "Page Name": rng.choice(PAGES),
                                   "URL": f"https://example.com/{rng.choice(PAGES).lower()}",
                                   "Billing Amount": str(rng.randrange(1, 500)),
                                   "Price": "\\302\\243" + str(rng.randrange(100))})  # fmt: skip
            out.append(line)
        data = ("\n".join(out) + "\n").encode()
        (revisions / f"{n}.json").write_bytes(data)
        size += len(data)
    return size


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def rate(records: int, seconds: float, peak: float | None = None) -> str:
    memory = f", peak {peak:,.0f} MiB" if peak is not None else ""
    return f"{records / seconds:>12,.0f} records/s  ({seconds:.2f} s{memory})"


#: Runs the CLI and prints its own peak memory (KiB) on stderr's last line.
_MEASURED = (
    "import atexit, resource, sys; atexit.register(lambda: print(resource.getrusage("
    "resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); sys.argv[0] = 'tally'; "
    "from tally.cli import main; main()"
)


def tally(data: Path, *args: str) -> tuple[float, float]:
    """How long the command took, and its peak memory in MiB."""
    started = time.perf_counter()
    command = [sys.executable, "-c", _MEASURED, *args, "--data-dir", str(data)]
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = int(done.stderr.decode().strip().splitlines()[-1]) / 1024
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--apply", action="store_true", help="also apply, and export")
    parser.add_argument("--keep", action="store_true", help="keep the files made")
    args = parser.parse_args()
    n = args.records
    work = Path(tempfile.mkdtemp(prefix="tally-import-bench-"))
    try:
        export, data = work / "export", work / "data"
        size = write_export(export, n)
        print(f"{n:,} records, {size / 2**20:,.0f} MiB of JSON lines; {load()}")
        sample = (export / "revisions" / "1.json").read_bytes().splitlines(keepends=True)
        started = time.perf_counter()
        for line in sample:
            orjson.loads(line)
        print(f"orjson.loads alone       {rate(len(sample), time.perf_counter() - started)}")
        started = time.perf_counter()
        for i, line in enumerate(sample):
            item = parse_line(line, f"1.json:{i + 1}")
            if item is not None:
                frame(item, KEY, T0)
        print(f"per line: parse, frame   {rate(len(sample), time.perf_counter() - started)}")
        framer = BlockFramer(KEY)
        blocks = [b"".join(sample[i : i + 1700]).rstrip(b"\n") for i in range(0, len(sample), 1700)]
        started = time.perf_counter()
        for i, block in enumerate(blocks):
            framer.frame_block("1.json", i * 1700 + 1, block, T0)
        print(f"blocks: parse, frame     {rate(len(sample), time.perf_counter() - started)}")

        tally(data, "products", "create", "bench")
        seconds, peak = tally(data, "import", "km", str(export), "-p", "bench")
        print(f"import km to the log     {rate(n, seconds, peak)}")
        tally(work / "one", "products", "create", "bench")
        one, peak_one = tally(work / "one", "import", "km", str(export), "-p", "bench",
                              "--jobs", "1")  # fmt: skip
        print(f"  the same, --jobs 1     {rate(n, one, peak_one)}")
        shutil.rmtree(work / "one")
        if not args.apply:
            return
        applying, peak = tally(data, "rebuild")
        print(f"apply (tally rebuild)    {rate(n, applying, peak)}")
        print(f"end to end, to lag 0     {rate(n, seconds + applying)}")
        for fmt in ("csv", "jsonl", "parquet"):
            took, peak = tally(data, "export", "events", "-p", "bench", "--format", fmt,
                               "-o", str(work / f"events.{fmt}"))  # fmt: skip
            print(f"export events {fmt:<8}   {rate(int(n * 0.88), took, peak)}")
        took, peak = tally(data, "export", "people", "-p", "bench", "-o", str(work / "p.csv"))
        print(f"export people csv        {rate(n // 20, took, peak)}  (people)")
        took, peak = tally(data, "export", "km", str(work / "out"), "-p", "bench")
        print(f"export km                {rate(n, took, peak)}")
        print(load())
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
