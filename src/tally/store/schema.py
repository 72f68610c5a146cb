"""The store's tables (DESIGN §4), in DuckDB.

Every applied record keeps its place in the total order of SPEC §11 — receive
time in ns, then stream, then position — as ``(recv_ns, stream, position)``.
"First seen", "current value" and "the earlier duplicate" are all decided by
comparing that key, never by the order in which the processor read the streams,
which is what makes the store a function of the set of records (SPEC §5).

Events keep the identity they were sent with; ``identities`` maps each aliased
identity to its person (the smallest identity of its component). Every event
and property value also keeps ``ph``, its identity's person as the store knew
it when the row was written (schema 4), and ``moved`` holds the current person
of every identity whose person changed since rows of it may have been written.
The invariant, whatever order the records arrive in: a stored row's ``ph`` is
its identity's current person unless that identity is in ``moved``, whose
``ph`` then is. A person is ``coalesce(moved.ph, ph)`` at query time, and a
merge or a revocation rewrites only the small tables (``identities``,
``moved``); answers never depend on arrival order (SPEC §5). Only what is
stored in ``ph`` does: it is how rows lie, like the blocks below, not what
they hold. When ``moved`` has :data:`FOLD_ROWS` rows and one for every
:data:`FOLD_SHARE` events, the processor rewrites the ``ph`` of their rows
and empties it, in the transaction of a batch (``Store._fold``), so that the
join stays small; once it has nothing to apply, at :data:`FOLD_ROWS` rows
alone (``Store.tidy``).

Events are kept in sorted blocks (schema 3): the processor appends each batch
at the end of ``events`` in arrival order, and once :data:`COMPACT_ROWS` events
lie unsorted there, it rewrites them, in the same transaction as a batch, as one
block ordered by :data:`EVENTS_SORT` (``Store._compact``). Within a block one
event's rows are contiguous and in time order, so DuckDB skips the row groups of
other events and other days by their zone maps (min/max per column). The block
size is a constant, so the cost of sorting per record does not grow with history.
The comment of ``events`` (:data:`SORTED_COMMENT`) says how many rows the
sorted blocks had when the last one was made, so the events beyond that count
are the unsorted ones. It is the table's comment rather than a row of a table
because it is not content: the store is a function of the records (SPEC §5);
where a block begins depends on how the records were batched.

Reports group people by number, not by text: every identity column has a
64-bit hash beside it (``ih``; ``ph`` for a person), computed by
:data:`IDENTITY_HASH` when the row is written, so a person is
``coalesce(moved.ph, ph)`` and reports join and count integers. The hash
is MD5's (a standard, so the same in every DuckDB version and in ClickHouse);
two identities of one product with the same hash would be one person in
reports: the chance (n²/2⁶⁵ for n identities) is about 1 in 37 million for a
million identities, 1 in 370,000 for ten million, 1 in 37 for a billion.

Every person also has a dense number (schema 5): ``persons`` gives each
person hash a ``pn`` (UINTEGER, from 0, never reused) the first time a row
or ``moved`` carries it, and every event and property value keeps ``pn``
beside its ``ph``, as ``moved`` does beside its ``ph``, so that a person's
number is ``coalesce(moved.pn, pn)`` exactly as its hash is
``coalesce(moved.ph, ph)``: wherever ``ph`` is written or folded, ``pn`` is
written with it, the number of that hash in ``persons``. Reports count
distinct people per interval as sets of those numbers (bitmaps, one bit a
person, ``Dialect.people_set``) rather than by hashing (person, interval)
pairs. Which number a person gets depends on the order the records arrived
in, as ``ph`` does: it is layout, not content; no answer depends on it. The
numbers are of hashes, not of (product, hash): a hash seen in two products
has one number, which only keeps the numbers fewer. The writer keeps the
numbers it has given in memory (``Store._numbers``), so numbering a batch
costs what the batch does, not what the history does; ``persons`` has no
index (its size is the count of numbers, and the next number).
"""

from __future__ import annotations

SCHEMA_VERSION = 5

#: The order of events within a sorted block: one event's occurrences, in time.
EVENTS_SORT = "product, event, time"
#: Unsorted events at the end of ``events`` that make a sorted block.
COMPACT_ROWS = 1_000_000
#: The comment of ``events``: how many of its rows are in sorted blocks.
SORTED_COMMENT = '{{"sorted_rows": {}}}'

#: Rows of ``moved`` at which the processor folds it into the stored persons,
#: at the least...
FOLD_ROWS = 10_000
#: ... and once it has a row for every FOLD_SHARE events: a fold rewrites the
#: ``ph`` of rows in every row group of ``events`` and ``property_values``
#: (the moved identities' rows lie everywhere), so its cost grows with the
#: history (2.2 s at 8 million events, 0.4 s at 1 million); folding after a
#: number of moved rows that grows as the history does keeps its cost per
#: record the same at any size (docs/benchmarks.md, "Session 10: apply12"),
#: and ``moved``, which reports join, at most 1% of the events.
FOLD_SHARE = 100

#: The hash of an identity (SQL over one text expression).
IDENTITY_HASH = "md5_number_lower({})"

DDL = """
CREATE TABLE IF NOT EXISTS meta (name VARCHAR PRIMARY KEY, value VARCHAR);

-- Applied log positions, committed with the batch that reached them.
CREATE TABLE IF NOT EXISTS positions (
    stream VARCHAR PRIMARY KEY,
    position BIGINT NOT NULL,
    records BIGINT NOT NULL          -- how many records lie before `position`
);

-- Every applied or rejected record's de-duplication key (SPEC §4), for the
-- whole history; `dedup_time` first so that look-ups skip by zone maps.
CREATE TABLE IF NOT EXISTS seen (
    dedup_time BIGINT NOT NULL,
    h1 BIGINT NOT NULL,
    h2 BIGINT NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS events (
    product VARCHAR NOT NULL,
    identity VARCHAR NOT NULL,
    event VARCHAR NOT NULL,          -- the name key (SPEC §2)
    time BIGINT NOT NULL,            -- event time, Unix seconds (SPEC §3)
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    properties MAP(VARCHAR, VARCHAR),  -- property key -> value, as sent with the event
    metadata MAP(VARCHAR, VARCHAR),    -- _c, _u, _ip, _ua, ...
    ih UBIGINT NOT NULL,               -- IDENTITY_HASH(identity)
    ph UBIGINT NOT NULL,               -- its person when written; moved.ph if moved since
    pn UINTEGER NOT NULL               -- the number of ph in persons (schema 5)
);

-- Person property history: every value ever set, from /s and /e (SPEC §6).
CREATE TABLE IF NOT EXISTS property_values (
    product VARCHAR NOT NULL,
    identity VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    time BIGINT NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    ih UBIGINT NOT NULL,
    ph UBIGINT NOT NULL,             -- as events.ph
    pn UINTEGER NOT NULL             -- as events.pn
);

-- Alias edges (SPEC §5). `status`: accepted, alias_cap (rejected by the cap) or
-- revoked (an operator revoked it).
CREATE TABLE IF NOT EXISTS aliases (
    product VARCHAR NOT NULL,
    a VARCHAR NOT NULL,
    b VARCHAR NOT NULL,
    time BIGINT NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    status VARCHAR NOT NULL,
    ah UBIGINT NOT NULL,             -- IDENTITY_HASH(a)
    bh UBIGINT NOT NULL              -- IDENTITY_HASH(b)
);

CREATE TABLE IF NOT EXISTS revocations (
    product VARCHAR NOT NULL,
    a VARCHAR NOT NULL,
    b VARCHAR NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL
);

-- Aliased identities only: `person` is the smallest identity of its person,
-- `grp` the smallest of everything linked by non-revoked edges (capped ones too),
-- the unit that the identity graph is re-derived in.
CREATE TABLE IF NOT EXISTS identities (
    product VARCHAR NOT NULL,
    identity VARCHAR NOT NULL,
    person VARCHAR NOT NULL,
    grp VARCHAR NOT NULL,
    ih UBIGINT NOT NULL,
    ph UBIGINT NOT NULL              -- IDENTITY_HASH(person)
);

-- The current person of every identity whose person changed after rows of it
-- may have been written (events.ph and property_values.ph are stale for it):
-- small, folded into those rows when it grows (schema.py, FOLD_ROWS).
CREATE TABLE IF NOT EXISTS moved (
    product VARCHAR NOT NULL,
    ih UBIGINT NOT NULL,
    ph UBIGINT NOT NULL,
    pn UINTEGER NOT NULL,            -- the number of ph in persons
    PRIMARY KEY (product, ih)
);

-- The dense number of every person hash that a row or `moved` carries (schema
-- 5): 0, 1, 2, ... in the order the writer met them, never reused; no index
-- (the writer keeps what it gave in memory, Store._numbers).
CREATE TABLE IF NOT EXISTS persons (
    ph UBIGINT NOT NULL,
    pn UINTEGER NOT NULL
);

-- Every identity that an applied record names (a person page 404s on others).
CREATE TABLE IF NOT EXISTS known_identities (
    product VARCHAR NOT NULL,
    identity VARCHAR NOT NULL,
    ih UBIGINT NOT NULL,
    PRIMARY KEY (product, identity)
);

-- Display names: the first spelling in the total order (SPEC §2).
CREATE TABLE IF NOT EXISTS names (
    product VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,           -- event | property
    key VARCHAR NOT NULL,
    display VARCHAR NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (product, kind, key)
);

-- Rejected records (SPEC §7) and properties dropped from applied ones.
CREATE TABLE IF NOT EXISTS rejects (
    product VARCHAR,
    reason VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    recv_ns BIGINT NOT NULL,
    stream VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    params VARCHAR NOT NULL,         -- JSON list of [name, value], as decoded
    detail VARCHAR                   -- e.g. which property was dropped and why
);

CREATE TABLE IF NOT EXISTS counters (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL);
"""

#: ART indexes on the identity hashes of the tables that grow with people,
#: not with events, as ``(index, table, column)``: the person page and the
#: views find one identity's rows there by index.
#:
#: The tables that grow with every record (``events``, ``property_values``)
#: have none: inserting random 64-bit hashes into an ART index of tens of
#: millions of entries, and the checkpoints that write it out, cost more as
#: the history grows (docs/store.md: at 10 million records the live path
#: applied at half its rate into an empty store). The person page scans
#: their narrow ``ih`` column instead.
INDEXED = [
    ("known_identities_ih", "known_identities", "ih"),
    ("identities_ih", "identities", "ih"),
    ("identities_ph", "identities", "ph"),
    ("aliases_ah", "aliases", "ah"),
    ("aliases_bh", "aliases", "bh"),
]
INDEXES = "".join(
    f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({column});\n"
    for index, table, column in INDEXED
)
#: Indexes that stores of schema 2 have on the tables that grow with every
#: record; dropped whenever a store is opened for writing, before a store of
#: schema 2 is converted (Store.__init__), so that the conversion moves no
#: index entry. Read-only opens leave them: the reads do not depend on them.
RETIRED_INDEXES = "".join(
    f"DROP INDEX IF EXISTS {index};\n" for index in ("events_ih", "property_values_ih")
)
DROP_INDEXES = "".join(f"DROP INDEX IF EXISTS {index};\n" for index, _, _ in INDEXED)

#: From schema 1 (no hashes) to 2, in place.
MIGRATE_1_TO_2 = [
    f"ALTER TABLE {table} ADD COLUMN {column} UBIGINT; "
    f"UPDATE {table} SET {column} = {IDENTITY_HASH.format(source)}"
    for table, column, source in (
        ("events", "ih", "identity"),
        ("property_values", "ih", "identity"),
        ("identities", "ih", "identity"),
        ("identities", "ph", "person"),
        ("known_identities", "ih", "identity"),
        ("aliases", "ah", "a"),
        ("aliases", "bh", "b"),
    )
]

#: From schema 3 to 4: every event's and property value's person, from the
#: identity graph as it is (``moved`` starts empty). The column is made afresh,
#: so that it follows ``ih`` as in a new store.
MIGRATE_3_TO_4 = [
    statement
    for table in ("events", "property_values")
    for statement in (
        f"ALTER TABLE {table} DROP COLUMN IF EXISTS ph",
        # NOT NULL before the rows are written: DuckDB cannot check a
        # constraint over updates outstanding in the transaction.
        f"ALTER TABLE {table} ADD COLUMN ph UBIGINT DEFAULT 0",
        f"ALTER TABLE {table} ALTER COLUMN ph SET NOT NULL",
        f"UPDATE {table} SET ph = coalesce((SELECT i.ph FROM identities i "
        f"WHERE i.product = {table}.product AND i.ih = {table}.ih), ih)",
        f"ALTER TABLE {table} ALTER COLUMN ph DROP DEFAULT",
    )
] + ["DELETE FROM moved"]


#: From schema 4 to 5: a number for every person hash that rows or ``moved``
#: carry (in hash order; ``persons`` made afresh), and ``pn`` beside every
#: ``ph``. The columns are made afresh, as in MIGRATE_3_TO_4. ``moved`` has
#: an index (its key), which DuckDB cannot alter a table under: it is made
#: again.
MIGRATE_4_TO_5 = [
    "DELETE FROM persons",
    "INSERT INTO persons SELECT ph, (row_number() OVER (ORDER BY ph) - 1)::UINTEGER FROM "
    "(SELECT ph FROM events UNION SELECT ph FROM property_values UNION SELECT ph FROM moved)",
    *[
        statement
        for table in ("events", "property_values")
        for statement in (
            f"ALTER TABLE {table} DROP COLUMN IF EXISTS pn",
            f"ALTER TABLE {table} ADD COLUMN pn UINTEGER DEFAULT 0",
            f"ALTER TABLE {table} ALTER COLUMN pn SET NOT NULL",
            f"UPDATE {table} SET pn = p.pn FROM persons p WHERE p.ph = {table}.ph",
            f"ALTER TABLE {table} ALTER COLUMN pn DROP DEFAULT",
        )
    ],
    "CREATE TEMP TABLE _moved AS SELECT m.product, m.ih, m.ph, p.pn FROM moved m "
    "JOIN persons p ON p.ph = m.ph",
    "DROP TABLE moved",
    "CREATE TABLE moved (product VARCHAR NOT NULL, ih UBIGINT NOT NULL, ph UBIGINT NOT NULL, "
    "pn UINTEGER NOT NULL, PRIMARY KEY (product, ih))",
    "INSERT INTO moved SELECT * FROM _moved",
    "DROP TABLE _moved",
]
