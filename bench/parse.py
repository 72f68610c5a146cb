"""Parse benchmark: µs per record for :func:`tally.beacon.parse_record`.

The processor must apply 100,000 records/s on one core, so normalising one
record has a budget of a few µs. This builds a list of realistic records
(mostly the browser library's ``/e`` with ``_k _p _n _t`` and four properties,
some ``/s``, ``/a``, POST bodies, fractional ``_t`` and rejects), then times,
with :mod:`timeit` over the whole list:

- decoding the parameters: Tally's decoder, next to ``urllib.parse.parse_qsl``;
- ``parse_record`` on the typical record alone, and on the mix;
- ``parse_record`` plus the de-duplication key, which the processor also needs;
- reading the mix's records back from log frames, which the processor does first.

Run from the repository: ``.venv/bin/python bench/parse.py [--records N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import timeit
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

from tally.beacon import UNKNOWN_KEY, Beacon, KeyStatus, decode_params, parse_record
from tally.log.record import Record, encode_record, read_frame

API_KEY = "0123456789abcdef0123456789abcdef01234567"
NOW_NS = 1_700_000_000 * 10**9
PAGES = ["Home", "Pricing", "Sign Up", "Docs: Getting Started", "Blog, News", "Checkout ✓"]
EVENTS = ["Viewed Page", "Signed Up", "Logged In", "Billed", "Added to Cart", "Visited Site"]
PLANS = ["free", "pro", "team", "enterprise"]

_PRODUCTS = {API_KEY: KeyStatus("acme")}


def lookup(key: str, recv_ns: int) -> KeyStatus:
    return _PRODUCTS.get(key, UNKNOWN_KEY)


def typical(rng: random.Random, i: int) -> Record:
    """The browser library's event: ~250 bytes, ``_t`` in seconds, 4 properties."""
    person = f"user{rng.randrange(10**6)}@example.com"
    query = urlencode(
        {
            "_k": API_KEY,
            "_p": person,
            "_n": rng.choice(EVENTS),
            "_t": str(NOW_NS // 10**9 + i // 1000),
            "Page Name": rng.choice(PAGES),
            "URL": f"https://www.example.com/{rng.choice(PAGES).lower()}?ref=nav",
            "Plan": rng.choice(PLANS),
            "Billing Amount": f"{rng.randrange(1, 500)}.{rng.randrange(100):02d}",
        }
    )
    return Record("GET", "/e", query.encode(), b"", NOW_NS + i * 10_000, "10.0.0.1")


def mix(rng: random.Random, i: int) -> Record:
    roll = rng.random()
    if roll < 0.6:
        return typical(rng, i)
    person = f"{rng.getrandbits(64):016x}"
    recv_ns = NOW_NS + i * 10_000
    if roll < 0.8:
        query = urlencode({"_k": API_KEY, "_p": person, "Plan": rng.choice(PLANS), "Age": "31"})
        return Record("GET", "/s", query.encode(), b"", recv_ns)
    if roll < 0.85:
        query = urlencode({"_k": API_KEY, "_p": person, "_n": f"{person}@example.com"})
        return Record("GET", "/a", query.encode(), b"", recv_ns)
    if roll < 0.9:  # a long call that a client sent as a POST form
        body = urlencode({"_n": "Searched", "Query": "x " * 400, "Results": "12"})
        query = urlencode({"_k": API_KEY, "_p": person})
        return Record("POST", "/e", query.encode(), body.encode(), recv_ns, "", "", _FORM_UTF8)
    if roll < 0.97:  # pyKISSmetrics: fractional _t
        query = urlencode(
            {"_k": API_KEY, "_p": person, "_n": "Logged In", "_t": f"{recv_ns / 1e9:.6f}"}
        )
        return Record("GET", "/e", query.encode(), b"", recv_ns)
    query = urlencode({"_k": "wrong", "_p": person, "_n": "Logged In"})  # a reject
    return Record("GET", "/e", query.encode(), b"", recv_ns)


_FORM_UTF8 = "application/x-www-form-urlencoded; charset=UTF-8"


def per_record(run: Callable[[], object], count: int, repeat: int) -> tuple[float, float]:
    """Best and median µs per record of ``run``, which handles ``count`` records.

    Many short runs: on a shared machine, the best of them is the cost of the
    code, and the median shows how much the neighbours took.
    """
    times = sorted(timeit.repeat(run, number=1, repeat=repeat))
    return times[0] / count * 1e6, statistics.median(times) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000, help="records in each list")
    parser.add_argument("--repeat", type=int, default=50, help="runs of each measurement")
    args = parser.parse_args()
    rng = random.Random(7)
    typical_records = [typical(rng, i) for i in range(args.records)]
    mixed_records = [mix(rng, i) for i in range(args.records)]
    average = sum(len(r.query) + len(r.body) for r in mixed_records) / len(mixed_records)
    typical_size = sum(len(r.query) for r in typical_records) / len(typical_records)

    def tally_decode(records: list[Record]) -> Callable[[], object]:
        return lambda: [decode_params(r.query) for r in records]

    def naive_decode(records: list[Record]) -> Callable[[], object]:
        return lambda: [
            parse_qsl(r.query.decode("utf-8", "replace"), keep_blank_values=True) for r in records
        ]

    def parse(records: list[Record]) -> Callable[[], object]:
        return lambda: [parse_record(r, lookup) for r in records]

    def read_frames(records: list[Record]) -> Callable[[], object]:
        buffer = b"".join(encode_record(record) for record in records)

        def run() -> object:
            offset, out = 0, []
            while (frame := read_frame(buffer, offset)) is not None:
                out.append(frame[0])
                offset = frame[1]
            return out

        return run

    def parse_and_key(records: list[Record]) -> Callable[[], object]:
        def run() -> object:
            out = []
            for record in records:
                beacon = parse_record(record, lookup)
                out.append(beacon.dedup_key() if isinstance(beacon, Beacon) else beacon)
            return out

        return run

    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"typical record: {typical_size:.0f} bytes; mix: {average:.0f} bytes on average")
    rows = [
        ("decode, typical: tally", tally_decode(typical_records)),
        ("decode, typical: urllib parse_qsl", naive_decode(typical_records)),
        ("parse_record, typical", parse(typical_records)),
        ("parse_record + dedup_key, typical", parse_and_key(typical_records)),
        ("decode, mix: tally", tally_decode(mixed_records)),
        ("decode, mix: urllib parse_qsl", naive_decode(mixed_records)),
        ("parse_record, mix", parse(mixed_records)),
        ("parse_record + dedup_key, mix", parse_and_key(mixed_records)),
        ("read_frame, mix", read_frames(mixed_records)),
    ]
    print(f"{'':<36} {'best':>8} {'median':>8}  (µs/record)  records/s at best")
    for label, run in rows:
        best, median = per_record(run, args.records, args.repeat)
        print(f"{label:<36} {best:8.2f} {median:8.2f}  {'':11}  {1e6 / best:>10,.0f}")


if __name__ == "__main__":
    main()
