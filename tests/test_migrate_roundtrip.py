"""Export → import into a fresh data directory → every report gives the same
answer (issue 13, point 3), on a generated product with aliases (before and
after the events they join), exact duplicates, property changes, revenue with
refunds, an experiment and a time zone."""

from __future__ import annotations

import json
import random
from pathlib import Path

from click.testing import CliRunner

from journeys import KEY, PRODUCT, build
from migrating import apply
from oracle import Alias, Event, Fact, Set, journey_rows
from tally.cli import main
from tally.log.record import encode_record
from tally.log.writer import SegmentWriter
from tally.reports import Product, run_report

TZ = "America/New_York"
START = 1_704_067_200  # 2024-01-01T00:00:00Z
RANGE = {"from": "2024-01-01", "to": "2024-03-01"}
BODIES = [
    ("metrics", {**RANGE, "event": "Signed Up", "interval": "week"}),
    ("metrics", {**RANGE, "event": "billed", "measure": "times", "interval": "month"}),
    ("metrics", {**RANGE, "event": "Billed", "measure": "sum", "property": "Billing Amount",
                 "segment": {"property": "Plan", "attribution": "at_event"}}),
    ("metrics", {**RANGE, "event": "Visited Site", "measure": "average_per_person",
                 "segment": {"property": "plan", "attribution": "last_ever"}}),
    ("funnel", {**RANGE, "steps": ["Visited Site", "Signed Up", "Billed"]}),
    ("funnel", {**RANGE, "steps": ["Visited Site", "Signed Up", "Billed"], "mode": "skip",
                "window": 86400 * 14,
                "segment": {"property": "Plan", "attribution": "first_ever"}}),
    ("cohort", {**RANGE, "first_event": "Signed Up", "return_event": "Logged In",
                "interval": "week", "buckets": 6}),
    ("cohort", {**RANGE, "first_event": "Visited Site", "return_event": "Visited Site",
                "count": "first_time", "unit": "times"}),
    ("revenue", {**RANGE, "interval": "week", "churn_days": 10}),
    ("abtest", {**RANGE, "experiment": "Variant", "conversion": "Billed"}),
    ("path", {**RANGE, "start": "Visited Site", "conversion": "Billed"}),
    ("path", {**RANGE, "start": "Visited Site", "conversion": "Billed", "direction": "last"}),
    ("people", {**RANGE, "conditions": [{"type": "event", "event": "Billed"}],
                "columns": [{"type": "property", "property": "Plan", "which": "first"},
                            {"type": "property", "property": "plan", "which": "current"},
                            {"type": "event", "event": "Billed", "which": "count"}],
                "page_size": 1000}),
    ("people", {**RANGE, "conditions": [
        {"type": "event", "event": "Signed Up", "did": False},
        {"type": "property", "property": "Variant", "op": "has_any_value"}],
        "logic": "any", "page_size": 1000}),
]  # fmt: skip


def generate(seed: int = 13) -> list[Fact]:
    rng = random.Random(seed)
    facts: list[Fact] = []
    names = ["Visited Site", "visited site", "Signed Up", "Logged In", "Billed", "BILLED"]
    for n in range(40):
        identities = [f"anon-{n}", f"user{n}@mail"] + ([f"phone-{n}"] if n % 3 == 0 else [])
        t = START + rng.randrange(0, 86400 * 50)
        journey: list[Fact] = []
        if n % 4 == 0:  # aliased before anything else
            journey.append(Alias(identities[0], identities[1], recv=t))
        for step in range(rng.randrange(3, 12)):
            t += rng.randrange(0, 86400 * 3)
            who = rng.choice(identities)
            name = names[min(step, len(names) - 1)] if step < 5 else rng.choice(names)
            props: dict[str, str] = {}
            if rng.random() < 0.4:
                props["Plan"] = rng.choice(["free", "pro", "Pro", "team"])
            if name.lower() == "billed":
                props["Billing Amount"] = rng.choice(["10", "25.5", "-10", "99", "$5"])
            recv = t + rng.randrange(0, 30)
            journey.append(Event(who, name, t, recv, props))
            if rng.random() < 0.15:  # a retry: an exact duplicate, received later
                journey.append(Event(who, name, t, recv + 5, props))
            if rng.random() < 0.2:
                journey.append(Set(who, t, recv, {"Variant": rng.choice("AB"), "plan": "team"}))
        if n % 4 == 1:  # aliased after the events
            journey.append(Alias(identities[1], identities[0], recv=t + 100))
        if len(identities) == 3:
            journey.append(Alias(identities[2], identities[0], recv=t + 200))
        facts.extend(journey)
    facts.sort(key=lambda f: f.recv)
    return facts


def cli(data_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return result.output


def test_export_km_then_import_gives_every_report_the_same_answer(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    for data_dir in (source, target):
        cli(data_dir, "products", "create", PRODUCT, "--key", KEY, "--timezone", TZ)
    writer = SegmentWriter(source / "log" / "c0")
    for entry in build(journey_rows(generate())):
        writer.write_durable(encode_record(entry.record))
    writer.close()
    store = apply(source)
    (duplicates,) = store.con.execute("SELECT value FROM counters").fetchone()
    assert duplicates > 0
    store.close()

    export = tmp_path / "export"
    assert "Exported" in cli(source, "export", "km", str(export), "-p", PRODUCT)
    assert (export / "index.csv").exists()
    assert (export / "status.csv").read_text().startswith("Total Revisions,")
    cli(target, "import", "km", str(export), "-p", PRODUCT)

    product = Product(PRODUCT, TZ, "Billing Amount")
    before, after = apply(source), apply(target)
    try:
        assert after.con.execute("SELECT count(*) FROM rejects").fetchone() == (0,)
        answers = []
        for kind, body in BODIES:
            want = run_report(before.cursor(), product, kind, body)
            got = run_report(after.cursor(), product, kind, body)
            assert got == want, (kind, body)
            answers.append(want)
    finally:
        before.close()
        after.close()
    # Answers worth comparing: people in every step, revenue, variants, paths.
    funnel, revenue, abtest, path = answers[4], answers[8], answers[9], answers[10]
    assert all(step["people"] > 0 for step in funnel["steps"])
    assert revenue["total_revenue"] > 0
    assert [v["participants"] > 0 for v in abtest["variants"]] == [True, True]
    assert path["converted"] > 0
    assert answers[12]["total"] > 0
    # The exports of events and people agree too (the importer's receive
    # times differ, never the data).
    for kind in ("events", "people"):
        a = cli(source, "export", kind, "--format", "jsonl", "-p", PRODUCT)
        b = cli(target, "export", kind, "--format", "jsonl", "-p", PRODUCT)
        assert a == b
        assert len(a.splitlines()) > 20
    people = [json.loads(line) for line in a.splitlines()]
    assert any(len(p["identities"]) == 3 for p in people)
