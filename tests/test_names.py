"""Names: display form and key (SPEC §2, §11)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally import names
from tally.names import MAX_NAME, name_key, normalise_name


@pytest.mark.parametrize(
    ("spec", "raw", "display"),
    [
        ("§2 verbatim", "Signed Up", "Signed Up"),
        ("§2 comma is a space", "Signed,Up", "Signed Up"),
        ("§2 colon is a space", "Plan:Tier", "Plan Tier"),
        ("§2 runs of white space collapse", "Signed \t\n Up", "Signed Up"),
        ("§2 a replaced comma collapses too", "Signed , Up", "Signed Up"),
        ("§2 trimmed", "  Signed Up  ", "Signed Up"),
        ("§2 Unicode white space", "Signed\u00a0\u2003Up", "Signed Up"),
        ("§11 NFC first", "Cafe\u0301", "Caf\u00e9"),
        ("§2 case is kept in the display form", "SIGNED up", "SIGNED up"),
        ("§11 empty", "", None),
        ("§11 white space only", " \t ", None),
        ("§11 separators only", ",: ,", None),
    ],
)
def test_normalise_name(spec: str, raw: str, display: str | None) -> None:
    assert normalise_name(raw) == display, spec


@pytest.mark.parametrize(
    ("spec", "spellings"),
    [
        ("§2 one event", ["Signed Up", "signed up", "Signed,Up", " SIGNED:up "]),
        ("§11 key is the case-fold", ["Straße", "STRASSE", "strasse"]),
        ("§11 NFC before the key", ["Caf\u00e9", "Cafe\u0301", "CAFE\u0301"]),
    ],
)
def test_spellings_share_one_key(spec: str, spellings: list[str]) -> None:
    assert len({name_key(spelling) for spelling in spellings}) == 1, spec


def test_name_key_of_an_empty_name_is_empty() -> None:
    assert name_key(" , ") == ""


def test_the_limit_applies_to_the_normalised_form() -> None:
    """SPEC §11: 255 characters after NFC, replacement, collapse and trim."""
    long_raw = "a" * 200 + " " * 100 + "b" * 54
    assert normalise_name(long_raw) == "a" * 200 + " " + "b" * 54
    assert len(normalise_name(long_raw) or "") == MAX_NAME


def test_the_cache_stays_bounded() -> None:
    for i in range(names._CACHE_SIZE + 10):
        names.normalise(f"name {i}")
    assert len(names._cache) <= names._CACHE_SIZE
    assert names.normalise("name 1") == ("name 1", "name 1")


def test_long_names_are_normalised_but_not_cached() -> None:
    raw = "X" * (names._CACHE_NAME_LENGTH + 1)
    assert normalise_name(raw) == raw
    assert raw not in names._cache


_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(_TEXT)
def test_normalising_twice_changes_nothing(raw: str) -> None:
    display = normalise_name(raw)
    if display is None:
        assert name_key(raw) == ""
        return
    assert normalise_name(display) == display
    assert name_key(raw) == name_key(display) == display.casefold()
    assert "," not in display
    assert ":" not in display
    assert display == display.strip()
    assert "  " not in display
