"""Values: when they are numeric, and their size limit (SPEC §2, §11)."""

from __future__ import annotations

import pytest

from tally.values import MAX_VALUE_BYTES, fits, is_numeric


@pytest.mark.parametrize(
    "value",
    ["123", "-4.5", "1e3", "+1", "0", "007", ".5", "5.", "1E-3", "2.5e+10", "-0"],
)
def test_numeric(value: str) -> None:
    """SPEC §2, §11: a finite decimal number."""
    assert is_numeric(value)


@pytest.mark.parametrize(
    "value",
    [
        "$100",  # §2
        " 1",  # §11 no white space
        "1 ",
        "1\n",  # ``$`` in a Python regex would accept this one
        "inf",  # §11 no inf/nan
        "-Infinity",
        "nan",
        "NaN",
        "1_000",  # §11 no separators
        "0x10",  # §11 no hex
        "",
        ".",
        "-",
        "e3",
        "1e",
        "1e+",
        "--1",
        "1.2.3",
        "١٢٣",  # Arabic-Indic digits: ``\d`` means 0-9 here
        "1,000",
    ],
)
def test_not_numeric(value: str) -> None:
    assert not is_numeric(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x" * MAX_VALUE_BYTES, True),
        ("x" * (MAX_VALUE_BYTES + 1), False),
        ("é" * (MAX_VALUE_BYTES // 2), True),  # 2 bytes each: exactly 8 KiB
        ("é" * (MAX_VALUE_BYTES // 2 + 1), False),  # fewer characters than 8192, too many bytes
        ("✓" * (MAX_VALUE_BYTES // 3 + 1), False),
        ("", True),
    ],
)
def test_a_value_fits_in_8_kib_of_utf8(value: str, ok: bool) -> None:
    """SPEC §2: at most 8 KiB of UTF-8."""
    assert fits(value) is ok
