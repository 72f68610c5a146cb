"""identity_graph.derive and explain, purely (SPEC §5, §11)."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.identity_graph import ACCEPTED, CAPPED, REVOKED, Derived, Edge, derive, explain


def edge(a: str, b: str, at: int, stream: str = "c0", position: int = 0) -> Edge:
    return Edge(a, b, (at, stream, position))


def people(derived: Derived) -> dict[str, set[str]]:
    """person -> its identities (people of 2+ only)."""
    out: dict[str, set[str]] = {}
    for identity, person in derived.person.items():
        out.setdefault(person, set()).add(identity)
    return out


def statuses(derived: Derived, edges: list[Edge]) -> list[str]:
    return [derived.status[e.order] for e in edges]


BIG = 1000

# (SPEC, edges, revocations, cap, people, statuses in the order of edges)
CASES = [
    ("§5 no edges, no people", [], [], BIG, {}, []),
    (
        "§5 one alias: the person is the smallest identity",
        [edge("bob", "anon", 1)],
        [],
        BIG,
        {"anon": {"anon", "bob"}},
        [ACCEPTED],
    ),
    (
        "§5 components: two separate people",
        [edge("a", "b", 1), edge("x", "y", 2), edge("y", "z", 3)],
        [],
        BIG,
        {"a": {"a", "b"}, "x": {"x", "y", "z"}},
        [ACCEPTED] * 3,
    ),
    (
        "§5 transitive through a chain",
        [edge("d", "c", 1), edge("c", "b", 2), edge("b", "a", 3)],
        [],
        BIG,
        {"a": {"a", "b", "c", "d"}},
        [ACCEPTED] * 3,
    ),
    (
        "§11 a self-alias is accepted and makes no person",
        [edge("a", "a", 1)],
        [],
        BIG,
        {},
        [ACCEPTED],
    ),
    (
        "§5, §11 the cap: the edge that would make 4 is capped",
        [edge("a", "b", 1), edge("a", "c", 2), edge("a", "d", 3)],
        [],
        3,
        {"a": {"a", "b", "c"}},
        [ACCEPTED, ACCEPTED, CAPPED],
    ),
    (
        "§11 the cap is decided in the total order, not the list order",
        [edge("a", "d", 3), edge("a", "c", 2), edge("a", "b", 1)],
        [],
        3,
        {"a": {"a", "b", "c"}},
        [CAPPED, ACCEPTED, ACCEPTED],
    ),
    (
        "§11 equal receive times: the stream, then the position, decide",
        [edge("a", "b", 1, "c1", 0), edge("a", "c", 1, "c0", 9), edge("a", "d", 1, "c0", 5)],
        [],
        3,
        {"a": {"a", "c", "d"}},
        [CAPPED, ACCEPTED, ACCEPTED],
    ),
    (
        "§11 an edge inside one person is accepted at the cap",
        [edge("a", "b", 1), edge("a", "c", 2), edge("a", "d", 3), edge("b", "c", 4)],
        [],
        3,
        {"a": {"a", "b", "c"}},
        [ACCEPTED, ACCEPTED, CAPPED, ACCEPTED],
    ),
    (
        "§5 the cap applies to joining two people",
        [edge("a", "b", 1), edge("c", "d", 2), edge("b", "d", 3)],
        [],
        3,
        {"a": {"a", "b"}, "c": {"c", "d"}},
        [ACCEPTED, ACCEPTED, CAPPED],
    ),
    (
        "§5 a cap of 1: no alias joins anyone",
        [edge("a", "b", 1), edge("a", "a", 2)],
        [],
        1,
        {},
        [CAPPED, ACCEPTED],
    ),
    (
        "§5 a revocation revokes an earlier edge of the pair, either direction",
        [edge("a", "b", 1), edge("b", "a", 2)],
        [edge("a", "b", 5)],
        BIG,
        {},
        [REVOKED, REVOKED],
    ),
    (
        "§5 a revocation revokes only earlier edges",
        [edge("a", "b", 1), edge("a", "b", 9)],
        [edge("b", "a", 5)],
        BIG,
        {"a": {"a", "b"}},
        [REVOKED, ACCEPTED],
    ),
    (
        "§5 the latest revocation counts",
        [edge("a", "b", 3)],
        [edge("a", "b", 1), edge("a", "b", 5)],
        BIG,
        {},
        [REVOKED],
    ),
    (
        "§5 a revocation of another pair revokes nothing",
        [edge("a", "b", 1)],
        [edge("a", "c", 5)],
        BIG,
        {"a": {"a", "b"}},
        [ACCEPTED],
    ),
    (
        "§5 a revoked edge frees its room under the cap",
        [edge("a", "b", 1), edge("a", "c", 2), edge("a", "d", 3)],
        [edge("a", "b", 2, "op")],
        3,
        {"a": {"a", "c", "d"}},
        [REVOKED, ACCEPTED, ACCEPTED],
    ),
    (
        "§5 another path keeps a person whole after a revocation",
        [edge("a", "b", 1), edge("b", "c", 2), edge("a", "c", 3)],
        [edge("a", "b", 9)],
        BIG,
        {"a": {"a", "b", "c"}},
        [REVOKED, ACCEPTED, ACCEPTED],
    ),
]


@pytest.mark.parametrize(
    ("edges", "revocations", "cap", "expected_people", "expected_statuses"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_derive(
    edges: list[Edge],
    revocations: list[Edge],
    cap: int,
    expected_people: dict[str, set[str]],
    expected_statuses: list[str],
) -> None:
    derived = derive(edges, revocations, cap)
    assert people(derived) == expected_people
    assert statuses(derived, edges) == expected_statuses


def test_groups_hold_capped_edges_but_not_revoked_ones() -> None:
    """The group (the unit re-derived together) spans capped edges, not revoked ones."""
    edges = [edge("a", "b", 1), edge("a", "c", 2), edge("c", "d", 3), edge("e", "f", 4)]
    derived = derive(edges, [edge("e", "f", 5)], cap=2)
    assert derived.group == {"a": "a", "b": "a", "c": "a", "d": "a"}
    assert derived.person == {"a": "a", "b": "a", "c": "c", "d": "c"}


# -- explain ---------------------------------------------------------------------------------


def test_explain_returns_the_shortest_accepted_path() -> None:
    chain = [edge("a", "b", 1), edge("b", "c", 2), edge("c", "d", 3), edge("d", "e", 4)]
    shortcut = edge("e", "b", 5)
    edges = [*chain, shortcut]
    derived = derive(edges, [], BIG)
    assert explain(edges, derived.status, "a", "e") == [chain[0], shortcut]
    assert explain(edges, derived.status, "e", "a") == [shortcut, chain[0]]
    assert explain(edges, derived.status, "a", "c") == chain[:2]


def test_explain_uses_accepted_edges_only() -> None:
    direct = edge("a", "z", 1)
    capped = edge("a", "y", 6)
    revoked = edge("a", "c", 3)
    around = [edge("a", "b", 4), edge("b", "c", 5)]
    edges = [direct, capped, revoked, *around]
    derived = derive(edges, [edge("a", "c", 9)], cap=4)
    assert derived.status[capped.order] == CAPPED
    assert explain(edges, derived.status, "a", "c") == around
    assert explain(edges, derived.status, "a", "y") == []
    assert explain(edges, derived.status, "a", "nobody") == []
    assert explain(edges, derived.status, "a", "a") == []


# -- properties --------------------------------------------------------------------------------

IDENTITIES = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
ORDERS = st.tuples(st.integers(0, 6), st.sampled_from(["c0", "c1", "op"]), st.integers(0, 40))


@st.composite
def graphs(draw: st.DrawFn) -> tuple[list[Edge], list[Edge], int]:
    orders = draw(st.lists(ORDERS, unique=True, max_size=24))
    cut = draw(st.integers(0, len(orders)))
    edges = [Edge(draw(IDENTITIES), draw(IDENTITIES), order) for order in orders[:cut]]
    revocations = [Edge(draw(IDENTITIES), draw(IDENTITIES), order) for order in orders[cut:]]
    return edges, revocations, draw(st.integers(1, 5))


@settings(max_examples=150, deadline=None)
@given(graph=graphs(), data=st.data())
def test_derive_is_invariant_under_permutation(
    graph: tuple[list[Edge], list[Edge], int], data: st.DataObject
) -> None:
    """§5: the graph depends on the set of edges, not on the order they are given."""
    edges, revocations, cap = graph
    expected = derive(edges, revocations, cap)
    shuffled = derive(
        data.draw(st.permutations(edges)), data.draw(st.permutations(revocations)), cap
    )
    assert shuffled == expected


@settings(max_examples=150, deadline=None)
@given(graph=graphs())
def test_derive_matches_a_naive_model(graph: tuple[list[Edge], list[Edge], int]) -> None:
    """§5, §11, against a model: replay non-revoked edges in order; join unless the
    joined person would exceed the cap; people are components of accepted edges."""
    edges, revocations, cap = graph
    derived = derive(edges, revocations, cap)
    person: dict[str, frozenset[str]] = {}

    def members(x: str) -> frozenset[str]:
        return person.get(x, frozenset({x}))

    for e in sorted(edges, key=lambda e: e.order):
        pair = {e.a, e.b}
        if any({r.a, r.b} == pair and e.order < r.order for r in revocations):
            assert derived.status[e.order] == REVOKED
            continue
        joined = members(e.a) | members(e.b)
        if members(e.a) != members(e.b) and len(joined) > cap:
            assert derived.status[e.order] == CAPPED
            continue
        assert derived.status[e.order] == ACCEPTED
        for x in joined:
            person[x] = joined
    expected = {x: min(group) for x, group in person.items() if len(group) > 1}
    assert derived.person == expected


@settings(max_examples=100, deadline=None)
@given(graph=graphs(), source=IDENTITIES, target=IDENTITIES)
def test_explain_is_a_shortest_path_of_accepted_edges(
    graph: tuple[list[Edge], list[Edge], int], source: str, target: str
) -> None:
    """§5: explain joins source to target through accepted edges, as short as BFS."""
    edges, revocations, cap = graph
    derived = derive(edges, revocations, cap)
    path = explain(edges, derived.status, source, target)
    accepted = [e for e in edges if derived.status[e.order] == ACCEPTED]
    distance = _distance(accepted, source, target)
    if source == target or distance is None:
        assert path == []
        assert (distance is None) == (
            derived.person.get(source, source) != derived.person.get(target, target)
        )
        return
    assert len(path) == distance
    node = source
    for step in path:
        assert step in accepted
        assert node in (step.a, step.b)
        node = step.b if step.a == node else step.a
    assert node == target


def _distance(edges: list[Edge], source: str, target: str) -> int | None:
    seen = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for e in edges:
            if node in (e.a, e.b):
                other = e.b if e.a == node else e.a
                if other not in seen:
                    seen[other] = seen[node] + 1
                    queue.append(other)
    return seen.get(target)
