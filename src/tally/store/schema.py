"""The store's tables (DESIGN §4), in DuckDB.

Every applied record keeps its place in the total order of SPEC §11 — receive
time in ns, then stream, then position — as ``(recv_ns, stream, position)``.
"First seen", "current value" and "the earlier duplicate" are all decided by
comparing that key, never by the order in which the processor read the streams,
which is what makes the store a function of the set of records (SPEC §5).

Events keep the identity they were sent with; ``identities`` maps each aliased
identity to its person (the smallest identity of its component), so a person is
``coalesce(identities.person, identity)`` at query time and a merge rewrites
only that small table.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

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
    metadata MAP(VARCHAR, VARCHAR)     -- _c, _u, _ip, _ua, ...
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
    position BIGINT NOT NULL
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
    status VARCHAR NOT NULL
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
    grp VARCHAR NOT NULL
);

-- Every identity that an applied record names (a person page 404s on others).
CREATE TABLE IF NOT EXISTS known_identities (
    product VARCHAR NOT NULL,
    identity VARCHAR NOT NULL,
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
