"""The importer's fast path (tally.migrate.blocks) writes, byte for byte, the
log records the per-line path (parse_line, then frame) writes: on lines made to
find where the two could part, on generated ones, and on real files read from
any position (gzip, a last line cut short, several files)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import hypothesis
import orjson
from hypothesis import strategies as st

from tally.log.record import read_frame
from tally.migrate.blocks import BlockFramer, framed_blocks
from tally.migrate.formats import json_items
from tally.migrate.importer import frame_items
from tally.migrate.kmjson import parse_line
from tally.migrate.records import Bad, frame
from tally.migrate.sources import Position, SourceFile, line_blocks, lines, source_file

KEY = "0123456789abcdef0123456789abcdef01234567"
RECV = 1_700_000_000_123_456_789
T = 1_700_000_000

#: Lines where the fast path could go wrong, each with why.
TRICKY = [
    '{"_p": "ann", "_t": 1700000000, "_n": "Signed Up", "Plan": "pro"}',  # plain
    '{"_p": "ann", "_t": 1700000000, "Plan": "pro"}',  # a set
    '{"_p": "ann", "_t": 1700000000, "_p2": "ann@example.com"}',  # an alias
    '{"_p": "ann", "_t": 1700000000, "_p2": "a@b", "_n": "x", "Plan": "p"}',  # alias: no props
    '{"_P": "ann", "_T": 1700000000, "_N": "Upper", "PLAN": "x"}',  # names in any case
    '{"_p": "ann", "_P": "bob", "_t": 1700000000, "_n": "Twice"}',  # _p and _P: the last
    '{"_p": "ann", "_t": 1700000000, "_t": 1700000001, "_n": "Same key twice"}',
    '{"_p": "ann", "_n": "No Time"}',  # no _t: an empty one
    '{"_p": "ann", "_t": null, "_n": "Null time"}',
    '{"_p": "ann", "_t": "1700000000", "_n": "Text time"}',
    '{"_p": "ann", "_t": 1700000000.5, "_n": "Float time"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "   "}',  # blank name: a set
    '{"_p": "ann", "_t": 1700000000, "_n": "\\u00a0"}',  # blank in Unicode's sense
    '{"_p": "ann", "_t": 1700000000, "_n": 12}',  # a number as a name
    '{"_p": "ann", "_t": 1700000000, "_n": null, "Plan": "x"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "A": true, "B": false, "C": null}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "A": [1, "two"], "B": {"c": "é"}}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "A": 12.5, "B": 1e3, "C": -0, "D": 1E-7}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Big": 18446744073709551616}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "S": "null true [ { }"}',  # words in text
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Price": "\\\\302\\\\243100"}',  # £100
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Plain": "\\\\101\\\\102"}',  # ASCII: kept
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Mixed": "\\\\101\\\\302\\\\243"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Bad": "\\\\377\\\\376"}',  # not UTF-8
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Ctl": "\\\\001\\\\302\\\\243"}',  # SOH
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Three": "\\\\\\\\302"}',
    '{"_p":"ann","_t":1700000000,"_n":"Bare","Price":"\\302\\243100"}',  # not JSON
    '{"_p":"ann","_t":1700000000,"_n":"Bare","Bad":"\\377\\376"}',
    '{"_p":"ann","_t":1700000000,"_n":"Bare","Pair":"\\\\302"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "K\\\\302\\\\243": "key escaped"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Nul": "a\\u0000b", "Soh": "\\u0001"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Stx\\u0002": "x"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "100% sure", "50%": "%41%"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "é ü 漢字 🎉", "Ünï": "\\ud83c\\udf89"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Lone": "\\ud800"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Tab": "a\\tb\\nc", "": "empty name"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "_k": "other key", "_d": "0", "_x": "y"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "M", "_c": "mobile", "_server_timestamp": 5}',
    '{"_p": "ann", "_t": 1700000000, "_n": "Comma", "a": 1,}',
    '{"_p": "ann", "_t": 1700000000, "_n": "NaN", "a": NaN}',
    '{"_p": "ann"}',
    '{"_k": "only"}',
    "{}",
    "[1, 2]",
    '"text"',
    "12",
    "null",
    "this is not json",
    "",
    "   \t",
    '  {"_p": "ann", "_t": 1700000000, "_n": "Spaces"}  ',
    '{"_p": "ann", "_t": 1700000000, "_n": "CR"}\r',
    '\ufeff{"_p": "ann", "_t": 1700000000, "_n": "BOM"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V"} {"_p": "bob"}',
    '{"_p": "ann", "_t": 1700000000, "_n": "V", "Ctl": "a\x01b"}',  # raw control character
    '{"_p": "a\\\\b", "_t": 1700000000, "_n": "Backslash"}',
]


def per_line(name: str, first: int, raws: list[bytes]) -> tuple[bytes, int, dict[str, int]]:
    """What the per-line path writes for these lines."""
    frames, rejected = [], {}
    for i, raw in enumerate(raws):
        item = parse_line(raw + b"\n", f"{name}:{first + i}")
        if item is None:
            continue
        if isinstance(item, Bad):
            rejected[item.reason] = rejected.get(item.reason, 0) + 1
        frames.append(frame(item, KEY, RECV))
    return b"".join(frames), len(frames), rejected


def check_block(raws: list[bytes], name: str = "revisions/1.json", first: int = 1) -> None:
    fast = BlockFramer(KEY).frame_block(name, first, b"\n".join(raws), RECV)
    assert fast == per_line(name, first, raws)


def test_tricky_lines_one_at_a_time_and_all_together():
    raws = [line.encode() for line in TRICKY]
    for i, raw in enumerate(raws):
        check_block([raw], first=i + 1)
    check_block(raws)
    check_block([b"\xff\xfe not UTF-8", *raws, b'{"_p": "\xe9", "_n": "Latin-1"}'])
    shuffled = raws * 3
    random.Random(1).shuffle(shuffled)
    check_block(shuffled)


def test_a_block_of_records_in_many_shapes_is_framed_without_a_python_step_a_line():
    plain = [
        {"_p": "ann", "_t": T, "_n": "Signed Up", "Plan": "pro", "Price": "\\302\\243" + "9"},
        {"_p": "bob", "_t": T + 1, "Plan": "free", "N": 12, "F": 2.5, "Big": 2**64},
        {"_p": "ann", "_t": T + 2, "_p2": "ann@mail", "_n": "dropped", "X": "left out"},
        {"_P": "cy", "_T": T + 3, "_N": "Upper", "_c": "mobile", "_server_timestamp": T},
        {"_p": "dee", "_n": "No time", "100%": "a b&c=d/é"},
        {"_p": "eve", "_t": T, "_n": "V", "_k": "dropped key", "_d": "0"},
    ]
    raws = [json.dumps(record).encode() for record in plain * 5]
    random.Random(2).shuffle(raws)
    framer = BlockFramer(KEY)
    objs = [orjson.loads(raw) for raw in raws]
    fast = framer._vectorised("f.json", 7, objs, b"\n".join(raws), RECV)
    assert fast is not None  # the vectorised path took it
    assert fast == per_line("f.json", 7, raws)
    # One that needs a step a line: an escape in a value the query leaves out.
    bad = json.dumps({"_p": "a", "_t": T, "_p2": "b", "X": "\\377"}).encode()
    objs.append(orjson.loads(bad))
    assert framer._vectorised("f.json", 7, objs, b"\n".join([*raws, bad]), RECV) is None
    check_block([*raws, bad])


def test_a_framer_keeps_its_plans_from_block_to_block():
    framer = BlockFramer(KEY)
    raws = [line.encode() for line in TRICKY]
    for first in (1, 100, 10_000):
        got = framer.frame_block("f.json", first, b"\n".join(raws), RECV)
        assert got == per_line("f.json", first, raws)


def test_records_of_every_shape_keep_a_bounded_number_of_plans(monkeypatch):
    monkeypatch.setattr("tally.migrate.blocks.MAX_PLANS", 5)
    framer = BlockFramer(KEY)
    for block in range(3):
        raws = [json.dumps({"_p": "a", "_t": T, f"Key {block} {i}": "v"}).encode()
                for i in range(20)]  # fmt: skip
        first = block * 20 + 1
        got = framer.frame_block("f.json", first, b"\n".join(raws), RECV)
        assert got == per_line("f.json", first, raws)
        assert len(framer._plans) <= 5 + 20


def test_names_of_files_that_need_escaping():
    raws = [line.encode() for line in TRICKY[:6]]
    for name in ("a b/100%.json", "dir\\file.json", "x:1.json", "é.json"):
        check_block(raws, name=name)


_names = st.sampled_from(
    ["_p", "_P", "_t", "_T", "_n", "_N", "_p2", "_k", "_d", "_c", "_server_timestamp",
     "Plan", "plan", "Page Name", "URL", "Price", "é", "100%", "a=b&c", ""]
)  # fmt: skip
_octal = st.sampled_from(["\\302\\243", "\\101", "\\377", "\\\\302", "\\001\\302\\243"])
_text = st.lists(st.one_of(st.text(max_size=8), _octal), max_size=4).map("".join)
_values = st.one_of(
    _text,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.sampled_from([" ", "", "\t", "Signed Up"]),
)


@st.composite
def _line(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=40))
    pairs = draw(st.lists(st.tuples(_names, _values), max_size=8))
    body = ", ".join(f"{json.dumps(n)}: {json.dumps(v)}" for n, v in pairs)
    text = "{" + body + "}"
    if kind == 1:
        text = text.replace("\\\\", "\\")  # bare octal escapes, as some exports have them
    return text.encode("utf-8", "surrogatepass")


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(_line(), min_size=1, max_size=20))
def test_generated_lines_are_framed_as_the_per_line_path_frames_them(raws):
    raws = [raw.replace(b"\n", b" ") for raw in raws]
    check_block(raws)


def write_source(root: Path) -> list[SourceFile]:
    rng = random.Random(7)
    records = []
    for i in range(3000):
        records.append(rng.choice(TRICKY) if i % 50 == 0 else json.dumps(
            {"_p": f"p{i % 97}", "_t": T + i, "_n": rng.choice(["A", "B"]), "N": i,
             "Price": "\\302\\243" + str(i)}))  # fmt: skip
    text = "\n".join(records)
    one, two, three = root / "1.json", root / "2.json.gz", root / "3.json"
    one.write_text(text[: len(text) // 3] + "\n")
    with gzip.open(two, "wt") as f:
        f.write(text[len(text) // 3 :] + "\n")
    three.write_text('{"_p": "cy", "_t": 1700000000, "_n": "Last"}\n{"_p":"cy","_t":17')
    return [source_file(path, root) for path in (one, two, three)]


def records_of(data: bytes) -> list[tuple[str, str, bytes]]:
    found, offset = [], 0
    while offset < len(data):
        record, offset = read_frame(data, offset)  # type: ignore[misc]
        found.append((record.method, record.path, record.query))
    return found


def test_files_read_a_block_at_a_time_give_the_per_line_records(tmp_path, monkeypatch):
    monkeypatch.setattr("tally.migrate.sources.BLOCK_BYTES", 4096)  # many blocks, lines cut
    monkeypatch.setattr("tally.migrate.blocks.CHUNK_SOURCE_BYTES", 10_000)
    files = write_source(tmp_path)
    chunks = list(framed_blocks(files, Position(), KEY))
    expected = list(frame_items(json_items(lines(files, Position())), KEY, Position(), 10**9))
    assert records_of(b"".join(c.data for c in chunks)) == records_of(expected[0].data)
    assert sum(c.records for c in chunks) == expected[0].records
    rejected: dict[str, int] = {}
    for chunk in chunks:
        for reason, n in chunk.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + n
    assert rejected == expected[0].rejected
    assert chunks[-1].position[:3] == expected[0].position[:3]
    cut = records_of(chunks[-1].data)[-1]
    assert b"why=truncated%20last%20line" in cut[2]
    # Each block ends where the per-line path's position is after its last
    # line (but for the bytes read on disk, which only progress shows).
    positions = {p[:3] for _, _, p in lines(files, Position())}
    assert all(c.position[:3] in positions for c in chunks)


def test_an_import_resumed_at_a_block_boundary_writes_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr("tally.migrate.sources.BLOCK_BYTES", 4096)
    monkeypatch.setattr("tally.migrate.blocks.CHUNK_SOURCE_BYTES", 10_000)
    files = write_source(tmp_path)
    chunks = list(framed_blocks(files, Position(), KEY))
    for stop in (1, len(chunks) // 2, len(chunks) - 2):
        rest = list(framed_blocks(files, chunks[stop].position, KEY))
        assert records_of(b"".join(c.data for c in rest)) == records_of(
            b"".join(c.data for c in chunks[stop + 1 :])
        )
        assert rest[-1].position[:3] == chunks[-1].position[:3]


def test_blocks_of_lines_longer_than_a_block(tmp_path):
    path = tmp_path / "long.json"
    long = json.dumps({"_p": "a", "_t": T, "_n": "Long", "X": "x" * 10_000})
    path.write_text(f"{long}\n{long}\n\n{long}")
    blocks = list(line_blocks([source_file(path)], Position(), size=1000))
    assert [(b.first, b.lines is not None, len(b.cut)) for b in blocks] == [
        (1, True, 0), (2, True, 0), (4, False, len(long)),
    ]  # fmt: skip
    assert blocks[-1].position == Position(0, path.stat().st_size, 4, path.stat().st_size)
