"""People as the connected components of the alias graph (SPEC §5), purely.

Given every alias edge of a group of identities and the revocations touching
them, :func:`derive` decides which edges hold and who is whom. It looks only at
each edge's place in the total order (SPEC §11), never at the order the edges
were read in, so any interleaving of the log's streams yields the same people:

- an edge is *revoked* when a revocation of the same pair comes after it;
- the remaining edges are replayed in order; one that would join two people
  into more than ``cap`` identities is rejected (``alias_cap``), one between two
  identities of the same person is always accepted;
- a person is named by its smallest identity, and so is a *group*: everything
  linked by non-revoked edges, capped ones included, which is the unit that must
  be re-derived together when an edge arrives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Order = tuple[int, str, int]  # (recv_ns, stream, position)

ACCEPTED = "accepted"
CAPPED = "alias_cap"
REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Edge:
    a: str
    b: str
    order: Order

    @property
    def pair(self) -> tuple[str, str]:
        return (self.a, self.b) if self.a <= self.b else (self.b, self.a)


@dataclass(frozen=True, slots=True)
class Derived:
    person: dict[str, str]  # identity -> person, for identities in a person of 2+
    group: dict[str, str]  # identity -> group, for identities in a group of 2+
    status: dict[Order, str]  # edge order -> ACCEPTED | CAPPED | REVOKED


class _Components:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self.size.get(ra, 1), self.size.get(rb, 1)
        if sa < sb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] = sa + sb

    def component_size(self, x: str) -> int:
        return self.size.get(self.find(x), 1)

    def names(self) -> dict[str, str]:
        """identity -> smallest identity of its component (2+ members only)."""
        smallest: dict[str, str] = {}
        for x in self.parent:
            root = self.find(x)
            if root not in smallest or x < smallest[root]:
                smallest[root] = x
        return {x: smallest[self.find(x)] for x in self.parent if self.component_size(x) > 1}


def derive(edges: Iterable[Edge], revocations: Iterable[Edge], cap: int) -> Derived:
    revoked_until: dict[tuple[str, str], Order] = {}
    for revocation in revocations:
        pair = revocation.pair
        if pair not in revoked_until or revoked_until[pair] < revocation.order:
            revoked_until[pair] = revocation.order
    status: dict[Order, str] = {}
    people, groups = _Components(), _Components()
    for edge in sorted(edges, key=lambda e: e.order):
        until = revoked_until.get(edge.pair)
        if until is not None and edge.order < until:
            status[edge.order] = REVOKED
            continue
        groups.union(edge.a, edge.b)
        same = people.find(edge.a) == people.find(edge.b)
        if not same and people.component_size(edge.a) + people.component_size(edge.b) > cap:
            status[edge.order] = CAPPED
            continue
        people.union(edge.a, edge.b)
        status[edge.order] = ACCEPTED
    return Derived(person=people.names(), group=groups.names(), status=status)


def explain(
    edges: Iterable[Edge], status: dict[Order, str], source: str, target: str
) -> list[Edge]:
    """The accepted alias edges that join ``source`` to ``target`` (shortest path)."""
    neighbours: dict[str, list[Edge]] = {}
    for edge in edges:
        if status.get(edge.order) == ACCEPTED:
            neighbours.setdefault(edge.a, []).append(edge)
            neighbours.setdefault(edge.b, []).append(edge)
    came_by: dict[str, Edge | None] = {source: None}
    frontier = [source]
    while frontier and target not in came_by:
        next_frontier = []
        for node in frontier:
            for edge in sorted(neighbours.get(node, []), key=lambda e: e.order):
                other = edge.b if edge.a == node else edge.a
                if other not in came_by:
                    came_by[other] = edge
                    next_frontier.append(other)
        frontier = next_frontier
    if target not in came_by:
        return []
    path: list[Edge] = []
    node = target
    while (step := came_by[node]) is not None:
        path.append(step)
        node = step.b if step.a == node else step.a
    return path[::-1]
