"""Processor benchmark: how fast records are applied to the store (issue 3).

Measures, in one run:

1. **apply rate**: a generated log of ``--records`` realistic records (events
   with properties, property sets, aliases, retried duplicates, bad keys) on two
   streams is applied from scratch by the real processor (``Processor.catch_up``:
   reading the log, normalising, de-duplicating, writing DuckDB), pinned to one
   CPU with DuckDB limited to one thread, then again on every CPU (the
   processor prepares the next batch while it writes one). Reference in the
   same run: merely reading and decoding the same log (``LogReader``), the
   floor for any processor.
2. **history cost**: one batch of 50,000 records applied into an empty store and
   into a store that already holds ``--history`` events (filled directly with
   SQL, so that it takes seconds), median of 3; the ratio is the target
   (at most 1.5).
3. **rebuild** (``--rebuild N``): ``tally rebuild`` of a generated log of N
   records, timed as a command.
4. **live path at size** (``--live-at N,N,...``): the next ``--chunk``
   records applied as ``tally serve`` applies them (``Processor.catch_up``,
   both threads, DuckDB on one thread, the server's memory limits) into
   stores that already hold N records of one generated log, made by the
   processor itself (indexes, de-duplication keys, identities and all;
   cached in ``bench/.data/processor``), median of ``--repeat`` rounds, and
   the ratio to the empty store (issue 12's target: at least 0.9 at 10M).
   The timed window ends with a checkpoint (as the apply rate's does), so
   that the records' share of writing the database file counts whatever
   DuckDB's checkpoint threshold.
   What the server does once before its first batch is timed apart: a
   sorted block of the events before (the copy starts just after one) and
   the person numbers read into memory (``Store.warm``).
5. **end to end** (``--end-to-end SECONDS``): ``tally serve`` under wrk (the
   ingest benchmark's request mix) for SECONDS, its applied lag sampled every
   second from ``/api/v1/status``, and how long it takes to catch up after.

    .venv/bin/python bench/processor.py                       # 1M records, 10M history
    .venv/bin/python bench/processor.py --records 200000 --history 1000000
    .venv/bin/python bench/processor.py --rebuild 10000000    # the 10M rebuild (minutes)
    .venv/bin/python bench/processor.py --records 0 --history 0 --end-to-end 30
    .venv/bin/python bench/processor.py --records 0 --history 0 \\
        --live-at 0,1000000,5000000,10000000           # ~8 min the first time

Everything else is written under a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import psutil

from tally.beacon import KeyStatus
from tally.log.reader import Entry, LogReader
from tally.log.record import Record, encode_record
from tally.log.writer import SegmentWriter
from tally.processor import Processor
from tally.settings import Settings
from tally.store import Store
from tally.store.schema import DROP_INDEXES, INDEXES, MIGRATE_4_TO_5

KEY = "0123456789abcdef0123456789abcdef01234567"
EVENTS = [
    "Visited Site",
    "Viewed Page",
    "Signed Up",
    "Logged In",
    "Added To Cart",
    "Billed",
    "Viewed Product",
    "Searched",
    "Shared",
    "Invited Friend",
    "Upgraded",
    "Downgraded",
    "Cancelled",
    "Opened Email",
    "Clicked Email",
    "Started Trial",
    "Watched Video",
    "Commented",
    "Downloaded",
    "Rated",
]
START = 1_790_000_000  # a Unix second in 2026


def generate(
    rng: random.Random, n: int, people: int, first: int = 0, start: int = START
) -> list[tuple[str, str]]:
    """(path, query) pairs: the mix a KISSmetrics client sends, 50 a second
    from ``start``, the first being the log's record number ``first``."""
    calls: list[tuple[str, str]] = []
    for i in range(n):
        person = f"user{rng.randrange(people)}"
        t = start + (first + i) // 50
        roll = rng.random()
        if roll < 0.80:
            name = quote(EVENTS[rng.randrange(len(EVENTS))]).replace("%20", "+")
            query = (
                f"_k={KEY}&_p={person}%40example.com&_n={name}&_t={t}"
                f"&Plan=plan{rng.randrange(4)}&Amount={rng.randrange(1000)}"
                f"&Page=%2Fpage%2F{rng.randrange(200)}&Referrer=site{rng.randrange(30)}.com"
            )
            calls.append(("/e", query))
        elif roll < 0.92:
            calls.append(
                (
                    "/s",
                    f"_k={KEY}&_p={person}%40example.com&_t={t}"
                    f"&Country=c{rng.randrange(50)}&Age={rng.randrange(18, 80)}",
                )
            )
        elif roll < 0.95:
            calls.append(("/a", f"_k={KEY}&_p=anon-{person}&_n={person}%40example.com&_t={t}"))
        elif roll < 0.98 and calls:
            calls.append(calls[-1])  # a client retry: a duplicate
        else:
            calls.append(("/e", f"_k=nokey&_p={person}&_n=Visited+Site&_t={t}"))
    return calls


def write_log(
    log_dir: Path,
    n: int,
    *,
    seed: int = 7,
    streams: int = 2,
    people: int = 0,
    begin: int = START,
    name: str = "c",
) -> int:
    """Write ``n`` records across ``streams`` log streams (``c0``, ``c1``, ...),
    received 50 a second from ``begin``, among ``people`` people (by default a
    tenth of ``n``); their total bytes."""
    rng = random.Random(seed)
    writers = [SegmentWriter(log_dir / f"{name}{i}") for i in range(streams)]
    pending: list[list[bytes]] = [[] for _ in writers]
    people = people or max(n // 10, 10)
    written = 0
    chunk = 200_000
    for start in range(0, n, chunk):
        calls = generate(rng, min(chunk, n - start), people, start, begin)
        for i, (path, query) in enumerate(calls):
            recv_ns = (begin + (start + i) // 50) * 10**9 + i
            frame = encode_record(
                Record("GET", path, query.encode(), b"", recv_ns, "127.0.0.1", "Mozilla/5.0")
            )
            pending[i % streams].append(frame)
        for writer, frames in zip(writers, pending, strict=True):
            data = b"".join(frames)
            writer.write_durable(data)
            written += len(data)
            frames.clear()
    for writer in writers:
        writer.close()
    return written


def keys(key: str, recv_ns: int) -> KeyStatus:
    return KeyStatus("default") if key == KEY else KeyStatus(None)


def pin_to_one_cpu() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def measure_read(log_dir: Path) -> float:
    reader = LogReader(log_dir)
    started = time.perf_counter()
    count = sum(1 for stream in reader.streams() for _ in reader.read(stream))
    return count / (time.perf_counter() - started)


def applied_to_file(processor: Processor, store: Store) -> int:
    """``processor.catch_up()``, and the records written into the database
    file: a checkpoint that the WAL's size has not yet called for is part of
    what applying them costs, whatever DuckDB's checkpoint threshold."""
    applied = processor.catch_up()
    store.checkpoint()
    return applied


def measure_apply(data_dir: Path, store_name: str = "store.duckdb") -> tuple[float, int]:
    """Records per second of ``Processor.catch_up`` into a new store, on the
    CPUs this process may use."""
    settings = Settings(data_dir=data_dir)
    store = Store(data_dir / store_name)
    store.con.execute("SET threads = 1")
    processor = Processor(settings, store, keys=lambda: keys)  # no catalog here
    started = time.perf_counter()
    applied = applied_to_file(processor, store)
    seconds = time.perf_counter() - started
    store.close()
    return applied / seconds, applied


def batch(n: int, offset: int) -> list[Entry]:
    rng = random.Random(offset)
    entries = []
    position = 0
    for i, (path, query) in enumerate(generate(rng, n, 100_000)):
        record = Record(
            "GET",
            path,
            query.encode(),
            b"",
            (START + 10**6) * 10**9 + offset + i,
            "127.0.0.1",
            "Mozilla/5.0",
        )
        size = len(encode_record(record))
        entries.append(Entry("c9", offset + position, offset + position + size, record))
        position += size
    return entries


def fill_history(store: Store, events: int) -> None:
    """``events`` past events (with property values and de-duplication keys), by SQL."""
    store.con.execute(
        f"""
        INSERT INTO events SELECT 'default', 'user' || (i % 1000000) || '@example.com',
            'event ' || (i % 20), {START} - 86400 * 90 + i // 120,
            ({START} - 86400 * 90)::BIGINT * 1000000000 + i, 'h' || (i % 2), i * 250,
            MAP {{'plan': 'plan' || (i % 4), 'amount': (i % 1000)::VARCHAR}}, MAP {{}},
            md5_number_lower('user' || (i % 1000000) || '@example.com'),
            md5_number_lower('user' || (i % 1000000) || '@example.com'),  -- no aliases: itself
            0  -- pn: numbered below
        FROM range({events}) t(i);
        INSERT INTO seen SELECT {START} - 86400 * 90 + i // 120, (hash(i) // 2)::BIGINT,
            (hash(i + 1) // 2)::BIGINT, ({START} - 86400 * 90)::BIGINT * 1000000000 + i,
            'h' || (i % 2), i * 250 FROM range({events}) t(i);
        INSERT INTO property_values SELECT 'default', 'user' || (i % 1000000) || '@example.com',
            'plan', 'plan' || (i % 4), {START} - 86400 * 90 + i // 60,
            ({START} - 86400 * 90)::BIGINT * 1000000000 + i, 'h' || (i % 2), i * 250,
            md5_number_lower('user' || (i % 1000000) || '@example.com'),
            md5_number_lower('user' || (i % 1000000) || '@example.com'), 0
        FROM range({events} // 2) t(i);
        INSERT INTO known_identities SELECT DISTINCT 'default', 'user' || i || '@example.com',
            md5_number_lower('user' || i || '@example.com')
        FROM range(1000000) t(i);
        """
    )
    for statement in MIGRATE_4_TO_5:  # each person's number, as a store of schema 4 gets them
        store.con.execute(statement)
    store.con.execute("CHECKPOINT")


def measure_history(work: Path, history: int, runs: int = 3) -> tuple[float, float]:
    """Median seconds to apply one 50,000-record batch: into an empty store, and
    into one holding ``history`` events."""
    times: dict[str, list[float]] = {"empty": [], "full": []}
    full = Store(work / "full.duckdb")
    fill_history(full, history)
    for run in range(runs):
        empty = Store(work / f"empty{run}.duckdb")
        for name, store in (("empty", empty), ("full", full)):
            entries = batch(50_000, offset=run * 10**9)
            started = time.perf_counter()
            store.apply(entries, keys)
            times[name].append(time.perf_counter() - started)
        empty.close()
    full.close()
    return statistics.median(times["empty"]), statistics.median(times["full"])


#: Generated logs and the stores they make, kept between runs (git-ignored).
DATA = Path(__file__).resolve().parent / ".data" / "processor"
LIVE_PEOPLE = 1_000_000
#: The chunk measured at each size is received after the whole history.
LIVE_BEGIN = START + 10**7


def live_stores(sizes: list[int]) -> dict[int, Path]:
    """Stores that hold the first N records of one generated log (1,000,000
    people, the ``--records`` mix, 50 records a second) for each N of
    ``sizes``, made as the live path makes them: one store, applied by the
    real processor (``Processor.catch_up``) N after N, copied at each N. The
    copies are made without the identity-hash indexes of ``schema.INDEXED``,
    which :func:`measure_live` builds in its copy of them before it is timed,
    as ``tally rebuild`` does at its end. Cached in ``DATA``."""
    top = max(sizes)
    history = DATA / f"history-{top}"
    settings = Settings(data_dir=history)
    if not (history / "complete").exists():
        shutil.rmtree(history, ignore_errors=True)
        print(f"writing a log of {top:,} records in {history} (once)", flush=True)
        write_log(settings.log_dir, top, people=LIVE_PEOPLE)
        (history / "complete").touch()
    stores = {n: history / f"store-{n}.duckdb" for n in sizes if n}
    if all(path.exists() for path in stores.values()):
        return stores
    building = history / "building.duckdb"
    for stale in (building, building.with_name(building.name + ".wal")):
        stale.unlink(missing_ok=True)
    store = Store(building)
    store.con.execute(DROP_INDEXES)
    processor = Processor(settings, store, keys=lambda: keys)
    applied = 0

    def count(n: int) -> None:
        nonlocal applied
        applied += n

    started = time.perf_counter()
    for n in sorted(stores):
        processor.catch_up(count, pause=lambda _, n=n: applied >= n, limit=100_000)
        store.con.execute("CHECKPOINT")
        shutil.copyfile(building, stores[n].with_suffix(".partial"))
        stores[n].with_suffix(".partial").rename(stores[n])
        print(
            f"  history: {applied:,} records applied in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    store.close()
    building.unlink()
    return stores


def measure_live(size: int, store_path: Path | None, chunk: Path, work: Path) -> dict[str, float]:
    """Apply the records of ``chunk`` (a log directory) into a copy of
    ``store_path`` (an empty store if None) as ``tally serve`` applies them:
    ``Processor.catch_up`` with its two threads, DuckDB on one thread, the
    server's memory limits. Run in a child process of its own, so that its
    memory is its own."""
    data_dir = work / f"live-{size}"
    shutil.copytree(chunk, Settings(data_dir=data_dir).log_dir)
    settings = Settings(data_dir=data_dir)
    if store_path is not None:
        shutil.copyfile(store_path, settings.store_path)
        # The indexes this Tally keeps (Store would build them; here without
        # DuckDB's progress bar).
        con = duckdb.connect(str(settings.store_path))
        con.execute("SET enable_progress_bar = false")
        con.execute(INDEXES)
        con.close()
    store = Store(settings.store_path)
    events = store.con.execute("SELECT count(*) FROM events").fetchone()
    store.threads = 1
    store.con.execute("SET threads = 1")
    store.limit_memory(settings.query_memory, settings.query_spill)
    # A block of sorted events is made every COMPACT_ROWS events at any size
    # (schema.py), a cost that does not grow with the history: the copy
    # starts just after one, as the empty store does, so that no size has one
    # fall in its chunk and another not. Timed apart.
    unsorted = 0
    started = time.perf_counter()
    if store_path is not None:
        store.con.execute("SET enable_progress_bar = false")
        unsorted = store.compact()
        store.checkpoint()
    block = time.perf_counter() - started
    # As the running processor does when it starts (Processor._run), before
    # its first batch: the person numbers read into memory. Timed apart too.
    started = time.perf_counter()
    store.warm()
    warm = time.perf_counter() - started
    processor = Processor(settings, store, keys=lambda: keys)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        me = psutil.Process()
        while not done.wait(0.1):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    applied = applied_to_file(processor, store)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    store.close()
    shutil.rmtree(data_dir)
    return {
        "events": float(events[0] if events else 0),
        "records": float(applied),
        "seconds": seconds,
        "peak": float(peak),
        "unsorted": float(unsorted),
        "block": block,
        "warm": warm,
    }


def _measure_live_child(queue: Any, *args: Any) -> None:
    queue.put(measure_live(*args))


def measure_live_all(sizes: list[int], chunk_records: int, repeat: int, work: Path) -> None:
    """The live path's rate at each size, ``repeat`` rounds over the sizes in
    turn (so that a busy minute falls on every size alike), the median."""
    stores = live_stores(sizes) if any(sizes) else {}
    chunk = DATA / f"chunk-{chunk_records}"
    if not (chunk / "complete").exists():
        shutil.rmtree(chunk, ignore_errors=True)
        write_log(chunk / "log", chunk_records, seed=11, people=LIVE_PEOPLE,
                  begin=LIVE_BEGIN, name="live")  # fmt: skip
        (chunk / "complete").touch()
    context = multiprocessing.get_context("spawn")
    print(f"live path: the next {chunk_records:,} records into a store of N records "
          "(Processor.catch_up, both threads, DuckDB 1 thread, 1 GB), "
          f"median of {repeat}", flush=True)  # fmt: skip
    results: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    for _ in range(repeat):
        for size in sizes:
            queue = context.Queue()
            child = context.Process(
                target=_measure_live_child,
                args=(queue, size, stores.get(size), chunk / "log", work),
            )
            child.start()
            results[size].append(queue.get())
            child.join()
    base = 0.0
    for size in sizes:
        rates = [r["records"] / r["seconds"] for r in results[size]]
        rate = statistics.median(rates)
        base = base or rate
        events = results[size][0]["events"]
        peak = max(r["peak"] for r in results[size])
        print(
            f"  N = {size:>10,} ({events:>10,.0f} events): {rate:8,.0f} records/s"
            f"  ratio {rate / base:.2f}  peak RSS {peak / 2**30:.2f} GiB"
            f"  (runs: {', '.join(f'{r:,.0f}' for r in rates)})",
            flush=True,
        )
        if size:
            blocks = [r["block"] for r in results[size]]
            warms = [r["warm"] for r in results[size]]
            print(
                f"      before timing: {results[size][0]['unsorted']:,.0f} unsorted events "
                f"made a block in {statistics.median(blocks):.2f} s, and the person numbers "
                f"were read in {statistics.median(warms):.2f} s (medians; not timed)",
                flush=True,
            )


def measure_rebuild(work: Path, n: int, jobs: int | None = None) -> tuple[float, int]:
    """``tally rebuild`` of a generated log of ``n`` records (cached in ``DATA``;
    ``--live-at``'s log of as many records is the same one, 10 records a person,
    and is used when it is there); ``jobs`` is its ``--jobs``, if given."""
    cached = DATA / f"history-{n}"
    if n != LIVE_PEOPLE * 10 or not (cached / "complete").exists():
        cached = DATA / f"rebuild-{n}"
    if not (cached / "complete").exists():
        shutil.rmtree(cached, ignore_errors=True)
        write_log(cached / "log", n)
        (cached / "complete").touch()
    data_dir = work / "rebuild"
    data_dir.mkdir()
    shutil.copytree(cached / "log", Settings(data_dir=data_dir).log_dir)
    env = {**os.environ, "TALLY_DATA_DIR": str(data_dir)}
    subprocess.run(
        [sys.executable, "-m", "tally", "products", "create", "default", "--key", KEY],
        check=True,
        env=env,
        capture_output=True,
    )
    started = time.perf_counter()
    command = [sys.executable, "-m", "tally", "rebuild"]
    if jobs is not None:
        command += ["--jobs", str(jobs)]
    rebuild = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert rebuild.stdout is not None
    indexing: list[float] = []  # when the rebuild said it builds the indexes

    def watch(lines: Any) -> None:
        for line in lines:
            if line.startswith("Indexing"):
                indexing.append(time.perf_counter() - started)
            elif line.startswith("Wrote"):
                print(f"  {line.strip()}")

    threading.Thread(target=watch, args=(rebuild.stdout,), daemon=True).start()
    tree_peak, peak_at = 0, 0.0
    while rebuild.poll() is None:
        if (rss := tree_rss(rebuild.pid)) > tree_peak:
            tree_peak, peak_at = rss, time.perf_counter() - started
        time.sleep(0.5)
    seconds = time.perf_counter() - started
    if rebuild.returncode:
        raise SystemExit(f"tally rebuild failed (exit {rebuild.returncode})")
    print(
        f"  the rebuild's processes together: peak RSS {tree_peak / 2**30:.2f} GiB "
        f"(sampled twice a second), at {peak_at:.0f} s"
    )
    if indexing:
        print(
            f"  every record applied at {indexing[0]:.1f} s; indexes and checkpoint "
            f"{seconds - indexing[0]:.1f} s"
        )
    return seconds, n


def tree_rss(pid: int) -> int:
    """The resident bytes of a process and its children (its preparing workers)."""
    try:
        top = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])
    except psutil.Error:  # it ended meanwhile
        return 0


def measure_end_to_end(work: Path, seconds: int, connections: int) -> None:
    """``tally serve`` under wrk for ``seconds``: the applied lag, every second."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ingest  # the ingest benchmark's server control and request mix

    wrk = shutil.which("wrk")
    if wrk is None:
        print("end-to-end: wrk is not installed (bash bench/install.sh)")
        return
    (work / "e2e").mkdir()
    tally = ingest.Tally(work / "e2e", workers=2)
    try:
        load = subprocess.Popen(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "-s",
                str(ingest.LUA),
                tally.url,
                "--",
                tally.key,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        lags: list[tuple[float, int, float]] = []
        peak = 0  # resident bytes of the whole server: collectors, core, preparing workers
        started = time.monotonic()
        while load.poll() is None:
            time.sleep(1.0)
            peak = max(peak, tree_rss(tally.process.pid))
            pipeline = tally.status()["pipeline"]
            assert isinstance(pipeline, dict)
            lags.append(
                (time.monotonic() - started, pipeline["lag_records"], pipeline["lag_seconds"])
            )
        output = load.communicate()[0]
        ended = time.monotonic()
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        sent = re.search(r"(\d+) requests in", output)
        while True:
            pipeline = tally.status()["pipeline"]
            assert isinstance(pipeline, dict)
            if pipeline["lag_records"] == 0 or time.monotonic() - ended > 3600:
                break
            time.sleep(0.5)
            peak = max(peak, tree_rss(tally.process.pid))
        caught_up = time.monotonic() - ended
        streams = tally.status()["pipeline"]["streams"]  # type: ignore[index]
        applied = sum(s["applied_records"] for s in streams)
    finally:
        tally.stop()
    server_log = tally.data_dir / "tally.log"
    said = server_log.read_text(errors="replace").splitlines() if server_log.exists() else []
    for line in said:  # when worker processes prepared batches, or failed
        if "tally.processor" in line:
            print("  server:", line)
    print(
        f"end-to-end, wrk -c{connections} for {seconds} s: "
        f"{float(rate.group(1)) if rate else 0:,.0f} requests/s"
    )
    for at, records, lag in lags[:: max(len(lags) // 10, 1)]:
        print(f"  t={at:5.1f} s  lag {records:>9,} records  {lag:6.2f} s")
    worst = max(lags, key=lambda x: x[2], default=(0.0, 0, 0.0))
    print(
        f"  worst lag {worst[2]:.2f} s ({worst[1]:,} records); "
        f"caught up {caught_up:.1f} s after the load ended"
    )
    print(f"  lag at the load's end {lags[-1][1] if lags else 0:,} records; "
          f"peak RSS of the server's processes {peak / 2**30:.2f} GiB")  # fmt: skip
    total = ended - started + caught_up
    print(
        f"  {int(sent.group(1)) if sent else 0:,} requests sent, {applied:,} records applied "
        f"{total:.1f} s after the first was sent: {applied / total:,.0f} records/s end to end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=1_000_000, help="log size for the apply rate"
    )
    parser.add_argument("--history", type=int, default=10_000_000, help="events already stored")
    parser.add_argument(
        "--rebuild", type=int, default=0, help="also time `tally rebuild` of N records"
    )
    parser.add_argument(
        "--end-to-end",
        type=int,
        default=0,
        metavar="SECONDS",
        help="also run tally serve under wrk for SECONDS and sample the applied lag",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="`tally rebuild --jobs` (by default its own)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (end-to-end)")
    parser.add_argument(
        "--live-at",
        default="",
        metavar="N,N,...",
        help="also the live path's apply rate into stores of these many records "
        "(e.g. 0,1000000,5000000,10000000; cached in bench/.data)",
    )
    parser.add_argument("--chunk", type=int, default=200_000, help="records applied (--live-at)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of --live-at (median)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tally-bench-processor-"))
    try:
        print(
            f"machine: {os.cpu_count()} CPUs; apply pinned to one CPU, then on all; DuckDB 1 thread"
        )
        if args.records:
            data_dir = work / "apply"
            size = write_log(Settings(data_dir=data_dir).log_dir, args.records)
            pin_to_one_cpu()
            read_rate = measure_read(data_dir / "log")
            rate, _ = measure_apply(data_dir)
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
            rate_all, _ = measure_apply(data_dir, "all-cpus.duckdb")
            print(f"log: {args.records:,} records, {size / 2**20:,.0f} MiB on 2 streams")
            print(f"reference, read + decode the log only: {read_rate:12,.0f} records/s")
            print(
                f"apply (read, normalise, dedup, write):  {rate:12,.0f} records/s"
                f"  ({rate / read_rate:.2f} of the reference)"
            )
            print(
                f"the same on {os.cpu_count()} CPUs (prepare || write): {rate_all:,.0f} records/s"
            )
        if args.history:
            empty, full = measure_history(work, args.history)
            print(
                f"one 50,000-record batch: empty store {empty:.3f} s, "
                f"with {args.history:,} events {full:.3f} s, ratio {full / empty:.2f}"
            )
        if args.live_at:
            sizes = [int(n.replace("_", "")) for n in args.live_at.split(",")]
            measure_live_all(sizes, args.chunk, args.repeat, work)
        if args.end_to_end:
            measure_end_to_end(work, args.end_to_end, args.connections)
        if args.rebuild:
            seconds, n = measure_rebuild(work, args.rebuild, args.jobs)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB
            print(
                f"tally rebuild of {n:,} records: {seconds:.1f} s ({n / seconds:,.0f} records/s), "
                f"peak RSS {peak:.2f} GiB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
