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
    texts = [f"SELECT {i} + ? /* bounded */" for i in range(statements.KEPT + 1)]
    oldest = statements.parsed(con, texts[0])
    kept = statements.parsed(con, texts[1])
    for text in texts[2:]:
        statements.parsed(con, texts[1])  # used again: stays
        statements.parsed(con, text)
    assert len(statements._parsed) <= statements.KEPT
    assert statements.parsed(con, texts[1]) is kept
    assert statements.parsed(con, texts[0]) is not oldest  # dropped, parsed again
    assert statements.execute(con, sql(texts[0], 2)).fetchall() == [(2,)]
