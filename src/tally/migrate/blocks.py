"""JSON lines framed as log records a block of lines at a time: the
importer's fast path (`tally import km|json`).

:func:`~tally.migrate.kmjson.parse_line` then :func:`~tally.migrate.records.frame`
cost one core about 12 µs a record in Python (docs/benchmarks.md). Here the
same log records, byte for byte, are made with most of the work done once a
block (256 KiB of lines: what is made of it stays in the CPU's caches)
instead of once a line:

- **Plans.** Records of one export have few shapes: the same keys in the same
  order. What :func:`~tally.migrate.kmjson.row_of` decides from the keys alone
  (which are reserved, the path, the order of the parameters) is decided once
  a shape, as a *plan*: a ``%`` template of the parameters' names and an
  ``itemgetter`` of the values in the template's order.
- **The block's text.** The records' parameters are laid out as ``_query``
  lays them out (names and values joined by NUL and SOH), records separated
  by STX, in one string: octal escapes are decoded, and the query string is
  escaped, in one pass over the whole block (C speed), then split per record.
- **Framing** with the payload's constant parts (path, user agent, receive
  time) made once a block and query length.
- **No Python step a line** when every line of a block is a record of a
  planned shape whose values are text and numbers (an export's usual block):
  parsing, templates and frames are then ``map`` and ``zip`` over C functions,
  with a Python step a shape.

Anything a plan does not cover exactly goes through the per-line path, so the
records are byte for byte those :func:`parse_line` and :func:`frame` make
(``tests/test_migrate_blocks.py``): a line that is not a JSON object or is
blank, a value that is ``null``, ``true``, ``false``, an array or an object,
an event whose name is blank or not text, a key with a backslash or a control
character, reserved names repeated in another case, an escape in a value the
query leaves out. A block whose text the one pass cannot take (a
``\\u0000`` escape, an octal escape that is not UTF-8 or spells a control
character) is framed line by line.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, compress, count, repeat
from operator import add, is_, itemgetter, lshift, or_
from typing import Any, NamedTuple

import orjson

from tally import wire
from tally.log.record import FRAME_HEADER, MAGIC, VERSION
from tally.migrate.importer import Framed, next_time
from tally.migrate.kmjson import (
    TEXT_OCTAL,
    BadEscape,
    decode_octal,
    object_row,
    parse_line,
    unescape_raw,
)
from tally.migrate.records import GET, SOURCE, USER_AGENT, Bad, Row, escape_query, frame
from tally.migrate.sources import Block, Position, SourceFile, line_blocks

_BARE_OCTAL = re.compile(rb"\\[0-7]{3}")
_NOT_PLAIN_TEXT = re.compile(r"[\x00-\x1f\\]")
#: Words and brackets a value other than text or a number needs.
_NOT_PLAIN = (b"null", b"true", b"false", b"[")
#: The types of the values a plan's template takes as the per-line path does
#: (%s is str() for them, as kmjson's _text is).
_PLAIN = frozenset({str, int, float})
_SEPARATORS = frozenset("\x00\x01\x02")
_PATHS = (wire.EVENT_PATH, wire.SET_PATH, wire.ALIAS_PATH)
_PAYLOAD_START = struct.Struct("<BBqHHHHH")  # record.py's payload header, up to the query
_U32 = struct.Struct("<I")
_NOT_PASSED = frozenset({wire.KEY, wire.TIME_IS_EVENT_TIME, wire.ALIAS_IN_EXPORT})


#: Shapes of record a framer keeps plans for (then it starts again): a
#: source whose every record has keys of its own costs a plan a line, not
#: memory without bound.
MAX_PLANS = 4096
#: Shapes in a block beyond which it is framed a line at a time.
_MAX_KINDS = 16
#: Source bytes a chunk (one write, one sync, one checkpoint) is made of.
CHUNK_SOURCE_BYTES = 2 * 1024 * 1024


def framed_blocks(files: list[SourceFile], start: Position, key: str) -> Iterator[Framed]:
    """The records of JSON-lines files from ``start`` on, framed a block at a
    time, in chunks of :func:`chunk_blocks` (a receive time a chunk), in one
    process."""
    framer = BlockFramer(key)
    recv_ns = next_time(0)
    for blocks in chunk_blocks(line_blocks(files, start)):
        yield framer.framed(blocks, recv_ns)
        recv_ns = next_time(recv_ns)


def chunk_blocks(blocks: Iterable[Block]) -> Iterator[list[Block]]:
    """Blocks in chunks of about :data:`CHUNK_SOURCE_BYTES` of lines."""
    chunk: list[Block] = []
    size = 0
    for block in blocks:
        chunk.append(block)
        size += len(block.lines or b"") + len(block.cut)
        if size >= CHUNK_SOURCE_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class Plan(NamedTuple):
    """How records of one shape (their keys, in order) become a query."""

    template: str  # "%d" for the line, then "%s" a value; NUL, SOH separators
    rest: str  # the template after _src (from the SOH before _k)
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    path: int  # index in _PATHS
    event_name: str | None  # the key of an event's name, checked not blank
    #: The values the query leaves out, if any: the per-line path decodes
    #: them all the same, so one with an escape may make the line a reject.
    dropped: Callable[[dict[str, Any]], tuple[Any, ...]] | None


class BlockFramer:
    """Frames blocks of JSON lines of one source; keeps its plans between blocks."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._plans: dict[tuple[str, ...], Plan | None] = {}  # of the file _plans_of
        self._plans_of = ""
        self._decoded: dict[str, str] = {}
        #: A payload's bytes before its query, by query length and path
        #: (length << 2 | path), with their length and CRC-32, for the
        #: current receive time.
        self._start: dict[int, tuple[bytes, int, int]] = {}
        self._recv_ns = -1

    def framed(self, blocks: list[Block], recv_ns: int) -> Framed:
        """Blocks of lines framed, with the position after the last; a last
        line cut short is a reject that says so when it is not a record."""
        frames: list[bytes] = []
        records = 0
        rejected: dict[str, int] = {}
        for block in blocks:
            if block.lines is not None:
                data, n, bad = self.frame_block(block.file.name, block.first, block.lines,
                                                recv_ns)  # fmt: skip
                frames.append(data)
                records += n
                for reason, count in bad.items():
                    rejected[reason] = rejected.get(reason, 0) + count
            if block.cut:
                parsed = parse_line(block.cut, f"{block.file.name}:{block.first}")
                if parsed is not None:
                    if isinstance(parsed, Bad):
                        parsed = parsed._replace(why=f"truncated last line ({parsed.why})")
                        rejected[parsed.reason] = rejected.get(parsed.reason, 0) + 1
                    frames.append(frame(parsed, self._key, recv_ns))
                    records += 1
        return Framed(b"".join(frames), records, rejected, blocks[-1].position)

    def frame_block(
        self, name: str, first: int, block: bytes, recv_ns: int
    ) -> tuple[bytes, int, dict[str, int]]:
        """Frame ``block``, whole lines of the source file ``name`` joined by
        newlines (the first of them its line ``first``): the frames, how many,
        and the rejects among them by reason."""
        raws = block.split(b"\n")
        if not _plain_text(name) or not _plain_text(self._key):
            return self._by_line(name, first, raws, recv_ns)
        parsed = raws
        if b"\\" in block and _bare_octal(block):
            # Bare octal escapes (not JSON), decoded before parsing as
            # parse_line does.
            try:
                parsed = [unescape_raw(raw) if b"\\" in raw else raw for raw in raws]
            except BadEscape:
                return self._by_line(name, first, raws, recv_ns)
            block = b"\n".join(parsed)
        try:
            objs: list[Any] | None = list(map(orjson.loads, parsed))
        except orjson.JSONDecodeError:
            objs = None  # a line that is not JSON: each is parsed on its own
        try:
            if objs is not None:
                done = self._vectorised(name, first, objs, block, recv_ns)
                if done is not None:
                    return done
            return self._planned(name, first, raws, parsed, objs, block, recv_ns)
        except _Slow:
            return self._by_line(name, first, raws, recv_ns)

    def _vectorised(
        self, name: str, first: int, objs: list[Any], block: bytes, recv_ns: int
    ) -> tuple[bytes, int, dict[str, int]] | None:
        """The block framed with no Python step a record (map and zip over C
        functions, a Python step a shape), when every line of it is a record
        a plan covers, with no value but text and numbers; else ``None``."""
        if b"\\u000" in block:
            return None
        if set(map(type, objs)) != {dict}:
            return None
        shapes = list(map(tuple, objs))
        distinct = set(shapes)
        if len(distinct) > _MAX_KINDS:
            return None  # a pass a shape over the block would cost more than a step a line
        if not _PLAIN.issuperset(map(type, chain.from_iterable(map(dict.values, objs)))):
            return None  # null, true, false, an array or an object
        plans = self._plans_for(name)
        for shape in distinct:
            if plans.get(shape, _ONCE) is _ONCE:  # (few shapes: worth a plan at once)
                plans[shape] = make_plan(shape, name, self._key)
        used = list(map(plans.__getitem__, shapes))
        kinds = [plan for plan in set(used) if plan is not None]
        if len(kinds) != len(distinct):
            return None  # a shape the per-line path must decide
        count_ = len(objs)
        rests: list[str] = [""] * count_
        paths: list[int] = [0] * count_
        for plan in kinds:
            if len(kinds) == 1:
                index: list[int] = list(range(count_))
                some = objs
            else:
                index = list(compress(range(count_), map(is_, used, repeat(plan))))
                some = list(map(objs.__getitem__, index))
            if plan.event_name is not None:
                names = list(map(itemgetter(plan.event_name), some))
                if set(map(type, names)) != {str} or not all(map(str.strip, names)):
                    return None
            if (
                plan.dropped is not None
                and b"\\" in block
                and any(map(_escaped, map(plan.dropped, some)))
            ):
                return None
            list(map(rests.__setitem__, index, map(plan.rest.__mod__, map(plan.values, some))))
            if plan.path:
                list(map(paths.__setitem__, index, repeat(plan.path)))
        source = f"{SOURCE}\x00{_literal(name)}:%d".__mod__
        text = "\x02".join(map(add, map(source, range(first, first + count_)), rests))
        if "\\" in text:
            text = TEXT_OCTAL.sub(self._decode, text)
        queries = escape_query(text.encode()).split(b"\x02")
        sizes = list(map(len, queries))
        keys = list(map(or_, map(lshift, sizes, repeat(2)), paths))
        starts = self._starts(recv_ns)
        for key in set(keys).difference(starts):
            starts[key] = _payload_start(key & 3, recv_ns, key >> 2)
        found = list(map(starts.__getitem__, keys))
        headers = map(
            FRAME_HEADER.pack,
            repeat(MAGIC),
            map(add, map(itemgetter(1), found), sizes),
            map(zlib.crc32, queries, map(itemgetter(2), found)),
        )
        frames = zip(headers, map(itemgetter(0), found), queries, strict=True)
        data = b"".join(chain.from_iterable(frames))
        return data, count_, {}

    def _planned(
        self,
        name: str,
        first: int,
        raws: list[bytes],
        parsed: list[bytes],
        objs: list[Any] | None,
        block: bytes,
        recv_ns: int,
    ) -> tuple[bytes, int, dict[str, int]]:
        """The block framed a line at a time: by its shape's plan when one
        covers it, else by the per-line path (``objs``: the lines parsed, if
        every one is JSON)."""
        if b"\\u000" in block:
            raise _Slow  # a \u0000-\u0009 escape: text with a NUL, SOH or STX of its own?
        loads = orjson.loads
        plans = self._plans_for(name)
        decode_error = orjson.JSONDecodeError
        check = any(word in block for word in _NOT_PLAIN) or block.count(b"{") != len(parsed)
        texts: list[str] = []
        append_text = texts.append
        paths: list[int] = []  # of the records framed here
        append_path = paths.append
        slow: list[tuple[int, bytes]] = []  # (records before it, frame) of the others
        rejected: dict[str, int] = {}
        for line, raw in zip(count(first), parsed, strict=False):
            if objs is not None:
                obj = objs[line - first]
            else:
                try:
                    obj = loads(raw)
                except decode_error:
                    obj = None
            if type(obj) is dict:
                shape = tuple(obj)
                plan = plans.get(shape, _UNKNOWN)
                if plan is _UNKNOWN:
                    # A plan costs a few lines' worth: made at a shape's second
                    # line, so that records of shapes of their own cost none.
                    plan = plans[shape] = _ONCE
                elif plan is _ONCE:
                    plan = plans[shape] = make_plan(shape, name, self._key)
                if plan is not None and plan is not _ONCE and not (check and _not_plain(raw)):
                    template, _, values, path, event_name, dropped = plan
                    if (
                        event_name is None
                        or (type(event := obj[event_name]) is str and event.strip())
                    ) and (dropped is None or not _escaped(dropped(obj))):
                        append_text(template % (line, *values(obj)))
                        append_path(path)
                        continue
                # As parse_line would go on with it, without parsing it again.
                data = self._item(object_row(obj, raw, f"{name}:{line}"), recv_ns, rejected)
                slow.append((len(paths), data))
                continue
            data = self._line(raws[line - first], f"{name}:{line}", recv_ns, rejected)
            if data:
                slow.append((len(paths), data))
        text = "\x02".join(texts)
        if "\\" in text:
            text = TEXT_OCTAL.sub(self._decode, text)
        queries = escape_query(text.encode()).split(b"\x02") if texts else []
        frames: list[bytes] = []
        append = frames.append
        pack_header = FRAME_HEADER.pack
        crc32 = zlib.crc32
        starts = self._starts(recv_ns)
        done = 0
        for before, data in [*slow, (len(paths), b"")]:
            for path, query in zip(paths[done:before], queries[done:before], strict=True):
                size = len(query)
                start = starts.get(size << 2 | path)
                if start is None:
                    start = starts[size << 2 | path] = _payload_start(path, recv_ns, size)
                append(pack_header(MAGIC, start[1] + size, crc32(query, start[2])))
                append(start[0])
                append(query)
            append(data)
            done = before
        return b"".join(frames), len(paths) + len(slow), rejected

    def _plans_for(self, name: str) -> dict[tuple[str, ...], Plan | None]:
        """The plans of the file ``name`` (it is in their templates); at most
        about MAX_PLANS of them, however many shapes a source's records have."""
        if name != self._plans_of or len(self._plans) > MAX_PLANS:
            self._plans_of, self._plans = name, {}
        return self._plans

    def _starts(self, recv_ns: int) -> dict[int, tuple[bytes, int, int]]:
        if recv_ns != self._recv_ns:
            self._recv_ns, self._start = recv_ns, {}
        return self._start

    def _decode(self, match: re.Match[str]) -> str:
        found = match.group()
        text = self._decoded.get(found)
        if text is None:
            try:
                text = decode_octal(found)
            except BadEscape as exc:
                raise _Slow from exc
            if not _SEPARATORS.isdisjoint(text):
                raise _Slow
            if len(self._decoded) < 100_000:
                self._decoded[found] = text
        return text

    def _line(self, raw: bytes, source: str, recv_ns: int, rejected: dict[str, int]) -> bytes:
        item = parse_line(raw + b"\n", source)
        return b"" if item is None else self._item(item, recv_ns, rejected)

    def _item(self, item: Row | Bad, recv_ns: int, rejected: dict[str, int]) -> bytes:
        if isinstance(item, Bad):
            rejected[item.reason] = rejected.get(item.reason, 0) + 1
        return frame(item, self._key, recv_ns)

    def _by_line(
        self, name: str, first: int, raws: list[bytes], recv_ns: int
    ) -> tuple[bytes, int, dict[str, int]]:
        rejected: dict[str, int] = {}
        frames = [self._line(raw, f"{name}:{first + i}", recv_ns, rejected)
                  for i, raw in enumerate(raws)]  # fmt: skip
        frames = [f for f in frames if f]
        return b"".join(frames), len(frames), rejected


def _not_plain(raw: bytes) -> bool:
    return any(word in raw for word in _NOT_PLAIN) or raw.count(b"{") != 1


class _Slow(Exception):
    """The block cannot be framed in one pass: frame it line by line."""


_UNKNOWN: Any = object()
_ONCE: Any = object()  # a shape seen once: no plan yet


def make_plan(shape: tuple[str, ...], name: str, key: str) -> Plan | None:
    """The plan of records with the keys ``shape``, in this order (as
    :func:`~tally.migrate.kmjson.row_of` orders their parameters); ``None``
    when the per-line path must decide."""
    reserved: dict[str, str] = {}  # lower-case name: the key
    props: list[str] = []
    for raw_name in shape:
        if "\\" in raw_name or not _plain_text(raw_name):
            return None
        if raw_name[:1] == wire.RESERVED_PREFIX:
            lower = raw_name.lower()
            if lower in reserved:
                return None  # _p and _P: the per-line path keeps the last
            reserved[lower] = raw_name
        else:
            props.append(raw_name)
    params: list[tuple[str, str]] = []  # parameter name, key
    if wire.PERSON in reserved:
        params.append((wire.PERSON, reserved[wire.PERSON]))
    event_name = None
    if wire.ALIAS_IN_EXPORT in reserved:
        params.append((wire.NAME, reserved[wire.ALIAS_IN_EXPORT]))
        path = wire.ALIAS_PATH
    elif wire.NAME in reserved:
        event_name = reserved[wire.NAME]
        params.append((wire.NAME, event_name))
        path = wire.EVENT_PATH
    else:
        path = wire.SET_PATH
    params.extend(
        (lower, raw_name)
        for lower, raw_name in reserved.items()
        if lower not in _NOT_PASSED and lower not in (wire.PERSON, wire.NAME)
    )
    if path != wire.ALIAS_PATH:
        params.extend((raw_name, raw_name) for raw_name in props)
    if not params:
        return None
    parts = [f"{SOURCE}\x00{_literal(name)}:%d", f"{wire.KEY}\x00{_literal(key)}"]
    parts.extend(f"{_literal(param)}\x00%s" for param, _ in params)
    if wire.TIME not in reserved:
        parts.append(f"{wire.TIME}\x00")  # no time: bad_time, never a guess (SPEC §10)
    parts.append(f"{wire.TIME_IS_EVENT_TIME}\x00{wire.EVENT_TIME_GIVEN}")
    template = "\x01".join(parts)
    keys = [raw_name for _, raw_name in params]
    others = [raw_name for raw_name in shape if raw_name not in keys]
    return Plan(template, "\x01" + "\x01".join(parts[1:]), _getter(keys), _PATHS.index(path),
                event_name, _getter(others) if others else None)  # fmt: skip


def _getter(keys: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    getter = itemgetter(*keys)
    return getter if len(keys) > 1 else lambda obj: (getter(obj),)


def _escaped(values: tuple[Any, ...]) -> bool:
    return any(type(value) is str and "\\" in value for value in values)


def _payload_start(path: int, recv_ns: int, query_size: int) -> tuple[bytes, int, int]:
    """What encode_frame puts before an imported record's query in its payload
    (the query and an empty body end it), its length and its CRC-32."""
    path_bytes = _PATHS[path].encode()
    start = b"".join((
        _PAYLOAD_START.pack(VERSION, GET, recv_ns, len(path_bytes), 0, len(USER_AGENT), 0, 0),
        _U32.pack(query_size), _U32.pack(0), path_bytes, USER_AGENT,
    ))  # fmt: skip
    return start, len(start), zlib.crc32(start)


def _bare_octal(block: bytes) -> bool:
    """Whether ``block`` holds an octal escape that is not in JSON's escaped
    form: without the escaped backslashes (pairs), a backslash before three
    octal digits is one (and no backslash at all is the common case)."""
    rest = block.replace(b"\\\\", b"")
    return b"\\" in rest and _BARE_OCTAL.search(rest) is not None


def _literal(text: str) -> str:
    return text.replace("%", "%%")


def _plain_text(text: str) -> bool:
    """No backslash (the block's octal decoding would read it) and no control
    character (NUL, SOH and STX lay the block out)."""
    return _NOT_PLAIN_TEXT.search(text) is None
