"""From a logged record to a Beacon or a Rejected (SPEC §1-§4, §7, §11).

Each table row names the SPEC section it checks. Queries are written as the
client sends them (``+`` and ``%XX`` included).
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tally.beacon import (
    DEFAULT_BLOCKED,
    UNKNOWN_KEY,
    Beacon,
    Drop,
    KeyStatus,
    Property,
    Reason,
    Rejected,
    _digest,
    decode_params,
    parse_record,
)
from tally.log.record import Record
from tally.names import name_key, normalise_name

NOW = 1_700_000_000  # the receive second of every record below, unless told
RECV_NS = NOW * 10**9 + 250_000_000
FORM = "application/x-www-form-urlencoded"

_KEYS = {
    "good": KeyStatus("acme"),
    "good2": KeyStatus("acme"),  # a second key of the same product
    "other": KeyStatus("globex"),
    "old": KeyStatus("acme", revoked=True),
}


def keys(key: str, recv_ns: int) -> KeyStatus:
    return _KEYS.get(key, UNKNOWN_KEY)


def record(
    query: str | bytes,
    path: str = "/e",
    *,
    method: str = "GET",
    body: str | bytes = b"",
    content_type: str = "",
    recv_ns: int = RECV_NS,
) -> Record:
    if isinstance(query, str):
        query = query.encode()
    if isinstance(body, str):
        body = body.encode()
    return Record(method, path, query, body, recv_ns, content_type=content_type)


def parse(query: str | bytes, path: str = "/e", **options: Any) -> Beacon | Rejected | None:
    blocked = options.pop("blocked", DEFAULT_BLOCKED)
    return parse_record(record(query, path, **options), keys, blocked=blocked)


def beacon(query: str | bytes, path: str = "/e", **options: Any) -> Beacon:
    result = parse(query, path, **options)
    assert isinstance(result, Beacon), result
    return result


def rejected(query: str | bytes, path: str = "/e", **options: Any) -> Rejected:
    result = parse(query, path, **options)
    assert isinstance(result, Rejected), result
    return result


def props(result: Beacon) -> dict[str, str]:
    return {prop.display: prop.value for prop in result.properties}


# -- decoding (SPEC §1 "Parameter decoding", §11 "Decoding") -----------------------

# fmt: off
DECODING = [
    ("§1 + is a space", b"a=x+y", [("a", "x y")]),
    ("§1 %XX is a byte", b"a=%41%62", [("a", "Ab")]),
    ("§1 lower-case hex", b"a=%e2%9c%93", [("a", "✓")]),
    ("§1 bytes are UTF-8", "a=✓".encode(), [("a", "✓")]),
    ("§1 an escaped + stays +", b"a=1%2B1", [("a", "1+1")]),
    ("§1 escaped separators do not split", b"a=x%26b%3Dc", [("a", "x&b=c")]),
    ("§1 names too", b"Page+Name=1&%C3%A9t%C3%A9=2", [("Page Name", "1"), ("été", "2")]),
    ("§1 invalid UTF-8 escaped: U+FFFD", b"a=%FF", [("a", "\ufffd")]),
    ("§1 invalid UTF-8 raw: U+FFFD", b"a=\xff&b=1", [("a", "\ufffd"), ("b", "1")]),
    ("§1 truncated sequence: U+FFFD", b"a=%C3&b=%C3%A9", [("a", "\ufffd"), ("b", "é")]),
    ("§1 raw and escaped bytes make one character", b"a=\xc3%A9", [("a", "é")]),
    ("§1 a repeated name: both, in order", b"a=1&a=2", [("a", "1"), ("a", "2")]),
    ("§1 an empty name is ignored", b"=x&a=1&=", [("a", "1")]),
    ("§11 malformed escape at the end", b"a=100%", [("a", "100%")]),
    ("§11 malformed escape, not hex", b"a=%zz&b=1", [("a", "%zz"), ("b", "1")]),
    ("§11 malformed escape, one digit", b"a=%4&b=%4g", [("a", "%4"), ("b", "%4g")]),
    ("§11 a literal % before an escape", b"a=%%41", [("a", "%A")]),
    ("§11 a malformed escape in a name", b"100%=1", [("100%", "1")]),
    ("§11 empty pairs are ignored", b"&&a=1&&b=2&", [("a", "1"), ("b", "2")]),
    ("§11 an empty value is the empty string", b"a=&b=2", [("a", ""), ("b", "2")]),
    ("§11 no = at all: empty value", b"a&b=2", [("a", ""), ("b", "2")]),
    ("§1 a value holding =", b"a=b=c", [("a", "b=c")]),
    ("§1 %00 is a NUL like any byte", b"a=%00&b=x%00y", [("a", "\x00"), ("b", "x\x00y")]),
    ("§1 a raw NUL is kept", b"a=\x00&b=1", [("a", "\x00"), ("b", "1")]),
    ("§1 backslashes are not escapes", b"a=\\x41\\n&b=%5Cx41", [("a", "\\x41\\n"), ("b", "\\x41")]),
    ("§1 nothing", b"", []),
]
# fmt: on


@pytest.mark.parametrize(("spec", "data", "pairs"), DECODING, ids=[row[0] for row in DECODING])
def test_decode_params(spec: str, data: bytes, pairs: list[tuple[str, str]]) -> None:
    assert decode_params(data) == pairs


def test_a_long_query_decodes_like_a_short_one() -> None:
    """Past 1,024 pairs the decoder goes pair by pair; the answer is the same."""
    pairs = [(f"p{i}", f"v {i}%") for i in range(3000)]
    assert decode_params(urlencode(pairs).encode()) == pairs


def _reference_decode(data: bytes) -> list[tuple[str, str]]:
    """SPEC §1 decoding the slow, obvious way (urllib keeps a malformed % literal)."""
    pairs = []
    for part in data.split(b"&"):
        name, _, value = part.partition(b"=")
        if name:
            pairs.append(
                (
                    unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace"),
                    unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8", "replace"),
                )
            )
    return pairs


# fmt: off
_WIRE_TOKENS = [
    b"a", b"_k", b"&", b"=", b"+", b"%", b"%2", b"%41", b"%zz", b"%C3", b"%A9", b"%00",
    b"%26", b"%3D", b"\\", b"\\x", b"\x00", b"\xff", b"\xc3", b"\xa9", "✓".encode(), b" ",
]
# fmt: on
_WIRE_BYTES = st.lists(st.sampled_from(_WIRE_TOKENS)).map(b"".join) | st.binary()


@given(_WIRE_BYTES)
def test_decode_params_agrees_with_the_obvious_decoder(data: bytes) -> None:
    assert decode_params(data) == _reference_decode(data)


# -- endpoints and methods (SPEC §1) ------------------------------------------------


def test_an_event() -> None:
    """SPEC §1: /e records an event with its properties."""
    result = beacon("_k=good&_p=bob%40example.com&_n=Signed+Up&Plan=Pro&Amount=9.99")
    assert result.kind == "event"
    assert result.product == "acme"
    assert result.identity == "bob@example.com"
    assert result.other is None
    assert (result.event_display, result.event_key) == ("Signed Up", "signed up")
    assert result.properties == (
        Property("amount", "Amount", "9.99"),
        Property("plan", "Plan", "Pro"),
    )
    assert (result.time, result.dedup_time, result.recv_ns) == (NOW, NOW, RECV_NS)
    assert result.metadata == result.dropped == ()


def test_a_property_set() -> None:
    """SPEC §1: /s sets person properties."""
    result = beacon("_k=good&_p=bob&Gender=F&Age=31", "/s")
    assert result.kind == "set"
    assert (result.event_key, result.event_display, result.other) == (None, None, None)
    assert props(result) == {"Age": "31", "Gender": "F"}


def test_an_alias() -> None:
    """SPEC §1: /a joins _p and _n."""
    result = beacon("_k=good&_p=bob&_n=bob%40example.com", "/a")
    assert result.kind == "alias"
    assert (result.identity, result.other) == ("bob", "bob@example.com")
    assert (result.event_key, result.properties) == (None, ())


@pytest.mark.parametrize(
    ("spec", "method", "path"),
    [
        ("§1 HEAD records nothing", "HEAD", "/e"),
        ("§1 OPTIONS records nothing", "OPTIONS", "/e"),
        ("§5 an operator record is not a tracking call", "OPERATOR", "/e"),
        ("§1 not a tracking path", "GET", "/x"),
        ("§1 paths are exact", "GET", "/e/"),
        ("§1 paths are exact (case)", "GET", "/E"),
        ("§1 the mobile verification", "GET", "/m/trk"),
    ],
)
def test_records_that_are_not_tracking_calls(spec: str, method: str, path: str) -> None:
    assert parse("_k=good&_p=bob&_n=x", path, method=method) is None, spec


@pytest.mark.parametrize(
    ("spec", "content_type", "body_read"),
    [
        ("§1 a form body", FORM, True),
        ("§11 a form body with a charset", FORM + "; charset=UTF-8", True),
        ("§11 any case", "Application/X-WWW-Form-URLEncoded;charset=utf-8", True),
        ("§1 decision: no content type is a form", "", True),
        ("§1 another content type: body ignored", "text/plain", False),
        ("§1 JSON: body ignored", "application/json", False),
    ],
)
def test_post_body(spec: str, content_type: str, body_read: bool) -> None:
    result = beacon(
        "_k=good&_p=bob&Plan=a&Seats=1",
        method="POST",
        body="_n=Billed&Plan=b&Amount=9",
        content_type=content_type,
    )
    if body_read:
        assert result.kind == "event", spec
        assert props(result) == {"Plan": "b", "Seats": "1", "Amount": "9"}, spec
    else:
        assert result.kind == "set", spec
        assert props(result) == {"Plan": "a", "Seats": "1"}, spec


def test_post_body_wins_over_the_query_also_for_reserved_names() -> None:
    """SPEC §1: merged, the body wins on a clash."""
    result = beacon("_k=good&_p=alice&_n=Q", method="POST", body="_p=bob&_n=B", content_type=FORM)
    assert (result.identity, result.event_display) == ("bob", "B")


def test_a_get_body_is_ignored() -> None:
    """SPEC §1: only POST carries a form body."""
    assert props(beacon("_k=good&_p=bob&_n=x", body="Plan=b", content_type=FORM)) == {}


# -- reserved names and properties (SPEC §1, §2, §11) --------------------------------

# fmt: off
PROPERTIES = [
    ("§1 a repeated parameter: the last wins", "plan=a&plan=b", {"plan": "b"}),
    ("§11 one key, two spellings: the later wins", "Plan=a&plan=b", {"plan": "b"}),
    ("§11 the later in the request, not the later name", "plan=a&Plan=b&plan=c", {"plan": "c"}),
    ("§11 the winner's spelling", "plan=a&PLAN=b", {"PLAN": "b"}),
    ("§2 names are normalised", "Page+Name=a&Big%2CDeal=9", {"Page Name": "a", "Big Deal": "9"}),
    ("§11 an empty value is the empty string", "plan=&seats", {"plan": "", "seats": ""}),
    ("§2 values are verbatim", "v=+Mixed+Case+", {"v": " Mixed Case "}),
    ("§11 a name that becomes empty is dropped", "%2C%3A=1&+=2&plan=a", {"plan": "a"}),
    ("§1 reserved keys are never properties", "_x=1&_K=2&_foo=3&plan=a", {"plan": "a"}),
    ("decision: a name that becomes _… is reserved too", "+_x=1&plan=a", {"plan": "a"}),
]
# fmt: on


@pytest.mark.parametrize(("spec", "query", "expected"), PROPERTIES, ids=[r[0] for r in PROPERTIES])
def test_properties(spec: str, query: str, expected: dict[str, str]) -> None:
    result = beacon("_k=good&_p=bob&_n=x&" + query)
    assert props(result) == expected
    assert result.dropped == ()


def test_properties_are_sorted_by_key_with_one_per_key() -> None:
    result = beacon("_k=good&_p=bob&_n=x&b=1&A=2&c=3&a=4")
    assert [prop.key for prop in result.properties] == ["a", "b", "c"]
    assert result.properties[0] == Property("a", "a", "4")


def test_metadata_keeps_the_known_reserved_keys() -> None:
    """SPEC §1, §11: _c _u _ip _ua _server_timestamp _p2 are metadata only."""
    result = beacon(
        "_k=good&_p=bob&_n=x&_u=sdk%2F1&_c=mobile_app&_ip=1.2.3.4&_ua=UA"
        "&_server_timestamp=1600000000&_p2=carol&_zz=unknown"
    )
    assert result.metadata == (
        ("_c", "mobile_app"),
        ("_ip", "1.2.3.4"),
        ("_p2", "carol"),
        ("_server_timestamp", "1600000000"),
        ("_u", "sdk/1"),
        ("_ua", "UA"),
    )
    assert result.properties == ()
    assert (result.identity, result.other, result.time) == ("bob", None, NOW)  # _p2 no alias


def test_a_property_name_over_255_characters_is_dropped_and_listed() -> None:
    """SPEC §2, §11: property_dropped; the record applies without it."""
    long_name = "N" * 256
    result = beacon(f"_k=good&_p=bob&_n=x&{long_name}=1&plan=a&{'M' * 255}=ok")
    assert props(result) == {"plan": "a", "M" * 255: "ok"}
    assert result.dropped == ((long_name, Drop.NAME_TOO_LONG),)


def test_the_name_limit_applies_after_normalising() -> None:
    """SPEC §11: 255 characters of the normalised form."""
    raw = "a" * 200 + "+" * 60 + "b" * 54  # 314 sent, 255 once collapsed
    assert props(beacon(f"_k=good&_p=bob&{raw}=1", "/s")) == {"a" * 200 + " " + "b" * 54: "1"}


@pytest.mark.parametrize(
    ("spec", "value", "kept"),
    [
        ("§2 8 KiB of ASCII", "x" * 8192, True),
        ("§2 one byte over", "x" * 8193, False),
        ("§2 bytes of UTF-8, not characters", "é" * 4097, False),
        ("§2 exactly 8 KiB of UTF-8", "é" * 4096, True),
    ],
)
def test_a_value_over_8_kib_is_dropped_and_listed(spec: str, value: str, kept: bool) -> None:
    result = beacon(f"_k=good&_p=bob&_n=x&plan=a&{urlencode({'Big': value})}")
    if kept:
        assert props(result) == {"plan": "a", "Big": value}, spec
        assert result.dropped == (), spec
    else:
        assert props(result) == {"plan": "a"}, spec
        assert result.dropped == (("Big", Drop.VALUE_TOO_LONG),), spec


def test_the_later_of_one_key_wins_before_the_limits() -> None:
    """SPEC §11 (later wins) then §2 (limit): the earlier value does not come back."""
    big = "x" * 8193
    result = beacon(f"_k=good&_p=bob&_n=x&plan=a&Plan={big}")
    assert props(result) == {}
    assert result.dropped == (("Plan", Drop.VALUE_TOO_LONG),)
    result = beacon(f"_k=good&_p=bob&_n=x&Plan={big}&plan=a")
    assert (props(result), result.dropped) == ({"plan": "a"}, ())


# -- /e without a name, /a with extras (SPEC §1, §11) -----------------------------------


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("§1 /e without _n is /s", None),
        ("§11 an empty _n", ""),
        ("§11 an _n that becomes empty", "+%2C+%3A+"),
    ],
)
def test_an_event_without_a_name_is_a_property_set(spec: str, name: str | None) -> None:
    query = "_k=good&_p=bob&_t=1600000000&plan=a"
    event = beacon(query if name is None else f"{query}&_n={name}")
    same_set = beacon(query, "/s")
    assert event == same_set, spec
    assert event.dedup_key() == same_set.dedup_key(), spec


def test_extra_parameters_on_an_alias_are_ignored() -> None:
    """SPEC §11."""
    result = beacon("_k=good&_p=bob&_n=bobby&plan=a&_d=1&_t=bad", "/a")
    assert (result.properties, result.dropped) == ((), ())
    assert result.time == NOW


def test_the_n_of_an_alias_is_an_identity_not_a_name() -> None:
    """SPEC §2: kept verbatim (case, commas) except trimming."""
    result = beacon("_k=good&_p=bob&_n=+Bob%2C+Jr.%3A+", "/a")
    assert result.other == "Bob, Jr.:"


# -- identities and keys (SPEC §2, §8, §11) -----------------------------------------

IDENTITIES = [
    ("§2 verbatim, case-sensitive", "Bob%40Example.com", "Bob@Example.com"),
    ("§2 trimmed", "+%09bob+", "bob"),
    ("§11 255 characters after trimming", "+" + "p" * 255 + "+", "p" * 255),
    ("§2 commas and colons stay", "a%2Cb%3Ac", "a,b:c"),
    ("§2 not blocked: similar", "nullable", "nullable"),
    ("§2 not blocked: 00", "00", "00"),
]


@pytest.mark.parametrize(("spec", "sent", "identity"), IDENTITIES, ids=[r[0] for r in IDENTITIES])
def test_identities(spec: str, sent: str, identity: str) -> None:
    assert beacon(f"_k=good&_p={sent}&_n=x").identity == identity


N256 = "n" * 256  # one character over the limit (SPEC §2)

# fmt: off
REJECTS = [
    # key (SPEC §8, §11)
    ("§11 no key", "_p=bob&_n=x", "/e", "unknown_key"),
    ("§11 an empty key", "_k=+&_p=bob&_n=x", "/e", "unknown_key"),
    ("§11 an unknown key", "_k=nope&_p=bob&_n=x", "/e", "unknown_key"),
    ("§11 keys match exactly", "_k=GOOD&_p=bob&_n=x", "/e", "unknown_key"),
    ("§8 a revoked key", "_k=old&_p=bob&_n=x", "/e", "revoked_key"),
    # person (SPEC §2)
    ("§2 no person", "_k=good&_n=x", "/e", "missing_person"),
    ("§2 an empty person", "_k=good&_p=&_n=x", "/s", "missing_person"),
    ("§11 a person that trims to empty", "_k=good&_p=+%09+", "/s", "missing_person"),
    ("§2 256 characters", "_k=good&_p=" + "p" * 256, "/s", "identity_too_long"),
    ("§2 blocked: null", "_k=good&_p=null&_n=x", "/e", "blocked_identity"),
    ("§2 blocked, any case", "_k=good&_p=NuLL", "/s", "blocked_identity"),
    ("§11 blocked after trimming", "_k=good&_p=+undefined+", "/s", "blocked_identity"),
    ("§2 blocked: [object Object]", "_k=good&_p=%5Bobject+object%5D", "/s", "blocked_identity"),
    ("§2 blocked: two quotes", "_k=good&_p=%27%27", "/s", "blocked_identity"),
    ("§2 blocked: two double quotes", "_k=good&_p=%22%22", "/s", "blocked_identity"),
    ("§2 blocked: -1", "_k=good&_p=-1", "/s", "blocked_identity"),
    ("§2 blocked: 0", "_k=good&_p=0", "/s", "blocked_identity"),
    ("§2 blocked: nan", "_k=good&_p=nan", "/s", "blocked_identity"),
    ("§2 blocked person of an alias", "_k=good&_p=guest&_n=bob", "/a", "blocked_identity"),
    # name (SPEC §2, §11)
    ("§11 an alias without _n", "_k=good&_p=bob", "/a", "missing_alias_identity"),
    ("§11 an alias _n that trims to empty", "_k=good&_p=bob&_n=+", "/a", "missing_alias_identity"),
    ("§2 an alias _n of 256", "_k=good&_p=bob&_n=" + N256, "/a", "identity_too_long"),
    ("§2 an event name of 256", "_k=good&_p=bob&_n=" + N256, "/e", "name_too_long"),
    # time (SPEC §3, §11)
    ("§11 _d=1 with a non-numeric _t", "_k=good&_p=bob&_d=1&_t=yesterday", "/e", "bad_time"),
    ("decision: _d=1 with an empty _t", "_k=good&_p=bob&_d=1&_t=", "/s", "bad_time"),
    ("§3 _d=1 before 2009", "_k=good&_p=bob&_d=1&_t=1230767999", "/s", "bad_time"),
    ("§3 _d=1 over 24 h ahead", f"_k=good&_p=bob&_d=1&_t={NOW + 86401}", "/s", "bad_time"),
    ("§3 _d=1, ahead in ms", f"_k=good&_p=bob&_d=1&_t={(NOW + 86401) * 1000}", "/s", "bad_time"),
    ("§3 _d=1, negative", "_k=good&_p=bob&_d=1&_t=-5", "/s", "bad_time"),
    ("decision: _d=1, beyond 64 bits", "_k=good&_p=bob&_d=1&_t=1e30", "/s", "bad_time"),
    ("decision: _d=1 with padding", "_k=good&_p=bob&_d=1&_t=+1600000000", "/s", "bad_time"),
    # alias (SPEC §2, §11)
    ("§2 an alias to a blocked identity", "_k=good&_p=bob&_n=Anonymous", "/a", "blocked_identity"),
    # precedence: the first of key, person, name, time, alias (SPEC §11)
    ("§11 key before person", "_k=nope&_n=x", "/e", "unknown_key"),
    ("§11 revoked before blocked", "_k=old&_p=null", "/s", "revoked_key"),
    ("§11 person before name", "_k=good&_n=" + N256, "/e", "missing_person"),
    ("§11 person before alias name", "_k=good", "/a", "missing_person"),
    ("§11 blocked person before alias name", "_k=good&_p=nil", "/a", "blocked_identity"),
    ("§11 person before time", "_k=good&_p=none&_d=1&_t=x", "/e", "blocked_identity"),
    ("§11 name before time", "_k=good&_p=bob&_n=" + N256 + "&_d=1&_t=x", "/e", "name_too_long"),
    ("§11 key before everything", "_k=x&_p=null&_n=" + N256 + "&_d=1&_t=x", "/e", "unknown_key"),
    ("§11 alias name before alias", "_k=good&_p=bob&_n=" + N256, "/a", "identity_too_long"),
]
# fmt: on


@pytest.mark.parametrize(("spec", "query", "path", "reason"), REJECTS, ids=[r[0] for r in REJECTS])
def test_rejects(spec: str, query: str, path: str, reason: str) -> None:
    assert rejected(query, path).reason == reason


def test_a_custom_blocked_list_replaces_the_default() -> None:
    """SPEC §2: configurable, compared case-insensitively."""
    blocked = frozenset({"Test-User"})
    assert rejected("_k=good&_p=TEST-user", "/s", blocked=blocked).reason == "blocked_identity"
    assert beacon("_k=good&_p=null", "/s", blocked=blocked).identity == "null"
    assert beacon("_k=good&_p=null", "/s", blocked=frozenset()).identity == "null"
    too_long = "p" * 256  # SPEC §11: the limit is checked before the list
    blocked = frozenset({too_long})
    assert rejected(f"_k=good&_p={too_long}", "/s", blocked=blocked).reason == "identity_too_long"


def test_the_key_is_trimmed_and_looked_up_at_the_receive_time() -> None:
    """SPEC §11: _k matched exactly after trimming; revocation by receive time."""
    seen: list[tuple[str, int]] = []

    def lookup(key: str, recv_ns: int) -> KeyStatus:
        seen.append((key, recv_ns))
        return KeyStatus("acme", revoked=recv_ns > RECV_NS)

    assert isinstance(parse_record(record("_k=+good%09&_p=bob", "/s"), lookup), Beacon)
    later = parse_record(record("_k=good&_p=bob", "/s", recv_ns=RECV_NS + 1), lookup)
    assert isinstance(later, Rejected)
    assert later.reason == "revoked_key"
    assert seen == [("good", RECV_NS), ("good", RECV_NS + 1)]


def test_a_reject_keeps_the_original_parameters_in_order() -> None:
    """SPEC §7: the reason and the original parameters (query, then body)."""
    result = rejected(
        "_k=old&_p=bob&plan=a&_x=1&plan=b",
        method="POST",
        body="_n=Billed&Amount=%2410",
        content_type=FORM,
    )
    assert result.reason == "revoked_key"
    assert result.product == "acme"  # a revoked key still names its product
    assert (result.path, result.recv_ns) == ("/e", RECV_NS)
    assert result.params == (
        ("_k", "old"),
        ("_p", "bob"),
        ("plan", "a"),
        ("_x", "1"),
        ("plan", "b"),
        ("_n", "Billed"),
        ("Amount", "$10"),
    )
    assert result.dedup_time == NOW  # no _t: the receive second
    assert rejected("_k=nope&_p=bob").product is None
    assert rejected("_k=nope&_p=bob&_t=1600000000123").dedup_time == 1_600_000_000


# -- time (SPEC §3, §11) ---------------------------------------------------------------

# fmt: off
TIMES = [
    # (spec, parameters, event time, dedup time)
    ("§3 no _t: the receive second", "", NOW, NOW),
    ("§3 _t without _d: only for dedup", "&_t=1600000000", NOW, 1_600_000_000),
    ("§3 _t over 10^11 is in ms", "&_t=1600000000999", NOW, 1_600_000_000),
    ("§3 exactly 10^11 is seconds", "&_t=100000000000", NOW, 100_000_000_000),
    ("§3 fractional is floored", "&_t=1600000000.999", NOW, 1_600_000_000),
    ("§3 negative fractional is floored", "&_t=-1.5", NOW, -2),
    ("§3 fractional ms", "&_t=1600000000999.9", NOW, 1_600_000_000),
    ("§3 10^11 and a zero fraction is seconds", "&_t=100000000000.00", NOW, 100_000_000_000),
    ("§3 just over 10^11 is in ms", "&_t=100000000000.01", NOW, 100_000_000),
    ("§11 numeric forms", "&_t=1.6e9", NOW, 1_600_000_000),
    ("§11 non-numeric _t without _d: ignored", "&_t=yesterday", NOW, NOW),
    ("§11 padded _t is non-numeric", "&_t=+1600000000", NOW, NOW),
    ("decision: beyond 64 bits without _d: ignored", "&_t=1e30", NOW, NOW),
    ("§3 _d=1: _t is the event time", "&_t=1600000000&_d=1", 1_600_000_000, 1_600_000_000),
    ("§3 _d=1 with ms", "&_t=1600000000123&_d=1", 1_600_000_000, 1_600_000_000),
    ("§3 _d=1, fractional", "&_t=1600000000.5&_d=1", 1_600_000_000, 1_600_000_000),
    ("§3 _d=1 at 2009-01-01", "&_t=1230768000&_d=1", 1_230_768_000, 1_230_768_000),
    ("§3 _d=1, 24 h ahead exactly", f"&_t={NOW + 86400}&_d=1", NOW + 86400, NOW + 86400),
    ("§11 _d=1 without _t: the receive time", "&_d=1", NOW, NOW),
    ("§3 _d=0: receive time", "&_t=1600000000&_d=0", NOW, 1_600_000_000),
    ("decision: _d=true is not _d=1", "&_t=1600000000&_d=true", NOW, 1_600_000_000),
    ("decision: _d is trimmed", "&_t=1600000000&_d=+1+", 1_600_000_000, 1_600_000_000),
]
# fmt: on


@pytest.mark.parametrize(("spec", "extra", "time", "dedup_time"), TIMES, ids=[r[0] for r in TIMES])
def test_times(spec: str, extra: str, time: int, dedup_time: int) -> None:
    for path in ("/e", "/s"):
        result = beacon("_k=good&_p=bob&_n=x" + extra, path)
        assert (result.time, result.dedup_time) == (time, dedup_time), (spec, path)


@given(
    whole=st.text("0123456789", min_size=1, max_size=20),
    fraction=st.text("0123456789", max_size=8),
    dot=st.sampled_from([".", ""]),
)
def test_a_fraction_of_a_second_is_floored_like_any_number(
    whole: str, fraction: str, dot: str
) -> None:
    """The shortcut for ``digits.digits`` agrees with the general rule (SPEC §3)."""
    raw = whole + dot + fraction if dot else whole
    number = Decimal(raw)  # below 10^20: within the 64-bit range in ms
    seconds = int(number.to_integral_value(rounding=ROUND_FLOOR))
    expected = seconds // 1000 if number > 10**11 else seconds
    assert beacon(f"_k=good&_p=bob&_n=x&_t={raw}").dedup_time == expected


def test_the_receive_second_is_floored() -> None:
    """SPEC §3: whole seconds; a negative receive time floors too."""
    assert beacon("_k=good&_p=bob", "/s", recv_ns=NOW * 10**9 + 999_999_999).time == NOW
    assert beacon("_k=good&_p=bob", "/s", recv_ns=-1).time == -1


def test_an_alias_uses_t_for_dedup_only() -> None:
    """Decision: /a has no event time, but a retried /a is absorbed (SPEC §4)."""
    result = beacon("_k=good&_p=bob&_n=bobby&_t=1600000000123&_d=1", "/a")
    assert (result.time, result.dedup_time) == (NOW, 1_600_000_000)


# -- de-duplication (SPEC §4, §11) -----------------------------------------------------


def dedup(query: str, path: str = "/e", **options: Any) -> bytes:
    return beacon(query, path, **options).dedup_key()


BASE = "_k=good&_p=bob&_n=Billed&_t=1600000000&Amount=10&Plan=pro"
LATER_NS = RECV_NS + 3600 * 10**9

SAME = [
    ("§4 a retry, received later", BASE, {"recv_ns": LATER_NS}),
    ("§4 property order", "_k=good&_p=bob&_n=Billed&_t=1600000000&Plan=pro&Amount=10", {}),
    ("§4 parameter order", "Plan=pro&_t=1600000000&Amount=10&_n=Billed&_p=bob&_k=good", {}),
    ("§4 the event name key", "_k=good&_p=bob&_n=billed&_t=1600000000&Amount=10&Plan=pro", {}),
    ("§4 property name keys", "_k=good&_p=bob&_n=Billed&_t=1600000000&amount=10&PLAN=pro", {}),
    ("§4 the ms rule", "_k=good&_p=bob&_n=Billed&_t=1600000000500&Amount=10&Plan=pro", {}),
    ("§11 _d is not in the key", BASE + "&_d=1", {}),
    ("§4 another key of the product", BASE.replace("good", "good2"), {}),
    ("§4 identity as stored (trimmed)", BASE.replace("_p=bob", "_p=+bob+"), {}),
    ("§1 metadata is not in the key", BASE + "&_c=mobile_app", {}),
    ("§4 GET and POST of one call", "_k=good&_p=bob", {"method": "POST", "body": BASE[15:]}),
]

DIFFERENT = [
    ("§4 another value", BASE.replace("Plan=pro", "Plan=team"), {}),
    ("§4 one more property", BASE + "&Seats=1", {}),
    ("§4 one property fewer", BASE.replace("&Plan=pro", ""), {}),
    ("§4 an empty value is a value", BASE + "&Seats=", {}),
    ("§4 another event", BASE.replace("Billed", "Refunded"), {}),
    ("§4 identities are case-sensitive", BASE.replace("bob", "Bob"), {}),
    ("§4 another product", BASE.replace("good", "other"), {}),
    ("§4 another _t", BASE.replace("1600000000", "1600000001"), {}),
    ("§4 values are case-sensitive", BASE.replace("pro", "Pro"), {}),
    ("§4 another endpoint", BASE, {"path": "/s"}),
]


@pytest.mark.parametrize(("spec", "query", "options"), SAME, ids=[r[0] for r in SAME])
def test_duplicates(spec: str, query: str, options: dict[str, Any]) -> None:
    if "body" in options:
        options = {**options, "content_type": FORM}
    assert dedup(query, **options) == dedup(BASE), spec


@pytest.mark.parametrize(("spec", "query", "options"), DIFFERENT, ids=[r[0] for r in DIFFERENT])
def test_not_duplicates(spec: str, query: str, options: dict[str, Any]) -> None:
    assert dedup(query, **options) != dedup(BASE), spec


def test_without_t_the_receive_second_decides() -> None:
    """SPEC §4: no _t, so the receive second is the de-duplication time."""
    query = "_k=good&_p=bob&_n=Billed"
    assert dedup(query) == dedup(query, recv_ns=RECV_NS + 500_000_000)
    assert dedup(query) != dedup(query, recv_ns=RECV_NS + 10**9)


def test_aliases_to_different_identities_are_not_duplicates() -> None:
    """Decision: the key of /a holds its _n where an event holds its name."""
    one = dedup("_k=good&_p=bob&_n=x&_t=1600000000", "/a")
    assert one == dedup("_k=good&_p=bob&_n=x&_t=1600000000", "/a", recv_ns=LATER_NS)
    assert one != dedup("_k=good&_p=bob&_n=y&_t=1600000000", "/a")
    assert one != dedup("_k=good&_p=bob&_n=x&_t=1600000000", "/e")


def test_a_retried_reject_is_a_duplicate() -> None:
    """SPEC §11: counted as a duplicate, not listed twice."""
    query = "_k=nope&_p=bob&_n=Billed&_t=1600000000&Plan=pro"
    first = rejected(query).dedup_key
    assert rejected(query, recv_ns=LATER_NS).dedup_key == first
    assert rejected(query + "&_d=1").dedup_key == first  # _d not in the key; same reason
    assert rejected(query.replace("pro", "team")).dedup_key != first
    assert rejected(query.replace("nope", "nope2")).dedup_key != first
    assert rejected(query, "/s").dedup_key != first
    # /e without _n is /s in every respect (SPEC §11), rejects included
    assert rejected("_k=nope&_p=bob").dedup_key == rejected("_k=nope&_p=bob", "/s").dedup_key
    assert len(first) == 16


def test_the_key_framing_is_unambiguous() -> None:
    """Fields holding the separator cannot collide with other fields."""
    assert _digest(["a\x00b", "c"], b"t") != _digest(["a", "b\x00c"], b"t")
    assert _digest(["a", "b"], b"t") != _digest(["a\x00b"], b"t")
    assert _digest(["1:a"], b"t") != _digest(["1", "a"], b"t")
    one = beacon("_k=good&_p=bob&_n=x&a=%00&b=1")
    two = beacon("_k=good&_p=bob&_n=x&a=&b=%001")
    assert one.dedup_key() != two.dedup_key()


# The key is stored with the records it absorbed: a change of framing or hash
# would let a rebuilt or upgraded processor count old duplicates anew.
GOLDEN_QUERY = "_k=good&_p=bob&_n=Billed&_t=1600000000&Amount=10&Plan=pro"
GOLDEN_KEY = "43ca6c93ce4983ab67816de90a16bda7"
GOLDEN_REJECT_KEY = "ac0d98d91c1454e6fbe63d6935d0550d"


def test_the_keys_are_pinned() -> None:
    assert dedup(GOLDEN_QUERY).hex() == GOLDEN_KEY
    assert rejected(GOLDEN_QUERY.replace("good", "nope")).dedup_key.hex() == GOLDEN_REJECT_KEY


# More of the same, over each kind, non-ASCII text, a millisecond _t, and the
# framing by lengths (a field holding a NUL), of a beacon and of a reject.
GOLDEN_KEYS = [
    ("/a", "_k=good&_p=bob&_n=Robert&_t=1600000000", "5a60108e4964519ec98fd5936b29e564"),
    ("/s", "_k=good&_p=b%C3%B6b&Plan=%E2%9C%93&Page+Name=Home", "9d61224869e5e60b305342aa3e409f1c"),
    ("/e", "_k=good&_p=bob&_n=Signed+Up&_d=1&_t=1600000000123", "edc7f566902f8b9330a8ffc91876e1c4"),
    ("/e", "_k=good&_p=bob&_n=x&a=%00&b=1", "217795aedcd389350fbf244fee68a7ab"),
    ("/e", "_k=nope&_p=b%00ob&_t=1600000000", "5edc4448354b4315472674a85cf0884d"),
    ("/a", "_k=good&_p=bob", "b0b19cc6679dfe0bb249d368902fda15"),
]


@pytest.mark.parametrize(("path", "query", "key"), GOLDEN_KEYS)
def test_more_keys_are_pinned(path: str, query: str, key: str) -> None:
    result = parse(query, path)
    assert result is not None
    digest = result.dedup_key() if isinstance(result, Beacon) else result.dedup_key
    assert digest.hex() == key


def test_the_key_is_stable_across_processes() -> None:
    code = (
        "from tally.beacon import parse_record, KeyStatus; from tally.log.record import Record;"
        f"r = Record('GET', '/e', {GOLDEN_QUERY.encode()!r}, b'', {RECV_NS});"
        "print(parse_record(r, lambda k, t: KeyStatus('acme')).dedup_key().hex())"
    )
    for seed in ("1", "2"):  # str hashes differ between these two runs
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == GOLDEN_KEY


# -- properties of the whole (hypothesis) ------------------------------------------------

_CONTENT_TYPES = st.sampled_from(["", FORM, f"{FORM}; charset=UTF-8", "text/plain", "x;;"])
_CONTENT_TYPES |= st.text(max_size=20)
_PATHS = st.sampled_from(["/e", "/s", "/a", "/x", ""]) | st.text(max_size=5)
# fmt: off
_QUERY_TOKENS = [
    "_k=good", "_k=old", "_p=", "_p=bob", "_p=null", "_n=", "_n=x", "_t=", "_d=1", "&", "=",
    "%", "+", "%zz", "%C3", "%00", "1e999999999", "1600000000", "-", ".", "e", "_x",
    "a", ",", ":", "\\", "\x00", "\ufffd", "✓", " " * 300, "y" * 3000,
]
# fmt: on
_TOKENS = st.lists(st.sampled_from(_QUERY_TOKENS)).map(lambda parts: "".join(parts).encode())


@given(
    query=_TOKENS | st.binary(),
    body=_TOKENS | st.binary(),
    path=_PATHS,
    method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "OPERATOR"]),
    content_type=_CONTENT_TYPES,
    recv_ns=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    blocked=st.sampled_from([DEFAULT_BLOCKED, frozenset(), frozenset({"bob", "ß"})]),
)
def test_parse_record_never_raises(
    query: bytes,
    body: bytes,
    path: str,
    method: str,
    content_type: str,
    recv_ns: int,
    blocked: frozenset[str],
) -> None:
    result = parse_record(
        Record(method, path, query, body, recv_ns, content_type=content_type), keys, blocked=blocked
    )
    if isinstance(result, Rejected):
        assert result.reason in set(Reason)
        assert len(result.dedup_key) == 16
    elif isinstance(result, Beacon):
        assert 0 < len(result.identity) <= 255
        assert result.identity == result.identity.strip()
        assert result.identity.casefold() not in {b.casefold() for b in blocked}
        assert len(result.dedup_key()) == 16
        prop_keys = [prop.key for prop in result.properties]
        assert prop_keys == sorted(set(prop_keys))
        for prop in result.properties:
            assert prop.key == name_key(prop.display)
            assert 0 < len(prop.display) <= 255
            assert not prop.display.startswith("_")
            assert len(prop.value.encode()) <= 8192
        if result.kind == "event":
            assert result.event_display is not None
            assert 0 < len(result.event_display) <= 255
    else:
        assert result is None


_NAME = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda name: (
        not name.startswith("_")
        and (display := normalise_name(name)) is not None
        and not display.startswith("_")
    )
)
_VALUE = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(
    sent=st.dictionaries(_NAME, _VALUE, max_size=8),
    quote_spaces=st.booleans(),
    as_body=st.booleans(),
)
def test_urlencoded_properties_come_back(
    sent: dict[str, str], quote_spaces: bool, as_body: bool
) -> None:
    """SPEC §1: what urlencode sends, parse_record reads, one property per key."""
    by_key: dict[str, tuple[str, str]] = {}
    for name, value in sent.items():  # in order: the later of one key wins (SPEC §11)
        display = normalise_name(name)
        assert display is not None
        by_key[name_key(name)] = (display, value)
    encoded = urlencode(sent, quote_via=quote) if quote_spaces else urlencode(sent)
    if as_body:
        result = beacon("_k=good&_p=bob&_n=x", method="POST", body=encoded, content_type=FORM)
    else:
        result = beacon("_k=good&_p=bob&_n=x&" + encoded)
    assert result.properties == tuple(
        Property(key, display, value) for key, (display, value) in sorted(by_key.items())
    )


@st.composite
def _dedup_records(draw: st.DrawFn) -> Record:
    params = [
        ("_k", draw(st.sampled_from(["good", "good2", "other"]))),
        ("_p", draw(st.sampled_from(["bob", "Bob", " bob"]))),
    ]
    name = draw(st.sampled_from([None, "", "Billed", "billed", "Refunded"]))
    if name is not None:
        params.append(("_n", name))
    sent_time = draw(st.sampled_from([None, "1600000000", "1600000000400", "1600000001", "x"]))
    if sent_time is not None:
        params.append(("_t", sent_time))
    if draw(st.booleans()):
        params.append(("_d", "1"))
    params += draw(
        st.lists(st.tuples(st.sampled_from(["plan", "Plan", "seats"]), st.sampled_from(["1", "2"])))
    )
    params = draw(st.permutations(params))
    path = draw(st.sampled_from(["/e", "/s", "/a"]))
    recv_ns = draw(st.sampled_from([RECV_NS, RECV_NS + 10**8, RECV_NS + 10**9]))
    return record(urlencode(params), path, recv_ns=recv_ns)


def _dedup_fields(result: Beacon) -> tuple[object, ...]:
    """The fields of SPEC §4, compared as values."""
    return (
        result.product,
        result.identity,
        result.kind,
        result.event_key,
        result.other,
        result.dedup_time,
        frozenset((prop.key, prop.value) for prop in result.properties),
    )


@given(_dedup_records(), _dedup_records())
def test_dedup_key_is_equal_exactly_when_the_spec_fields_are(one: Record, two: Record) -> None:
    first, second = parse_record(one, keys), parse_record(two, keys)
    assume(isinstance(first, Beacon) and isinstance(second, Beacon))
    assert isinstance(first, Beacon)
    assert isinstance(second, Beacon)
    same = _dedup_fields(first) == _dedup_fields(second)
    assert (first.dedup_key() == second.dedup_key()) is same
