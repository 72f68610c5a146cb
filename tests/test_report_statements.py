"""Reports' SQL texts are parsed once (tally.reports.statements): a kept
statement answers with the values of each call, on any cursor and thread,
and the texts kept are bounded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import duckdb

from tally.reports import statements
from tally.reports.sql import sql


def test_a_kept_statement_answers_with_each_calls_values_on_any_cursor() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range AS n FROM range(100)")
    text = "SELECT count(*) FROM t WHERE n >= ? AND n < ? /* kept */"
    first = statements.parsed(con, text)
    cursor = con.cursor()
    assert statements.parsed(cursor, text) is first  # parsed once, whoever asks
    assert statements.execute(con, sql(text, 0, 10)).fetchall() == [(10,)]
    assert statements.execute(cursor, sql(text, 5, 100)).fetchall() == [(95,)]

    def count(bounds: tuple[int, int]) -> int:
        with con.cursor() as own:
            row = statements.execute(own, sql(text, *bounds)).fetchone()
            assert row is not None
            return int(row[0])

    asked = [(i % 50, 50 + i % 50) for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(count, asked)) == [50] * 200


def test_the_texts_kept_are_bounded_least_recently_used_first() -> None:
    con = duckdb.connect()
    # Texts of about 1,000 characters: enough of them to pass KEPT_CHARS.
    pad = "0 + " * 240
    count = statements.KEPT_CHARS // len(f"SELECT {pad}0 + ? /* bounded */") + 2
    texts = [f"SELECT {pad}{i} + ? /* bounded */" for i in range(count)]
    oldest = statements.parsed(con, texts[0])
    kept = statements.parsed(con, texts[1])
    for text in texts[2:]:
        statements.parsed(con, texts[1])  # used again: stays
        statements.parsed(con, text)
    assert sum(map(len, statements._kept.statements)) <= statements.KEPT_CHARS
    assert statements.parsed(con, texts[1]) is kept
    assert statements.parsed(con, texts[0]) is not oldest  # dropped, parsed again
    assert statements.execute(con, sql(texts[0], 2)).fetchall() == [(2,)]


def test_a_text_too_long_to_keep_is_parsed_every_time() -> None:
    con = duckdb.connect()
    columns = statements.LONGEST_KEPT // 8 + 1  # ", ? AS c" and a number: 8+ characters
    text = "SELECT " + ", ".join(f"? AS c{i}" for i in range(columns)) + " /* long */"
    assert len(text) > statements.LONGEST_KEPT
    first = statements.parsed(con, text)
    assert statements.parsed(con, text) is not first
    assert text not in statements._kept.statements
    row = statements.execute(con, sql(text, *range(columns))).fetchone()
    assert row == tuple(range(columns))
