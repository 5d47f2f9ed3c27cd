"""The dependency graph: its order, walks, stages and cycles, on ids as in a plan file and on keys as in the store."""

from __future__ import annotations

from orch.dag import Dag

# d after b and c, both after a; e alone; f after e.
DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
TWO_PARTS = {**DIAMOND, "e": [], "f": ["e"]}


def ring(length: int) -> dict[str, list[str]]:
    """t0 -> t1 -> ... -> t{length-1} -> t0, listed in that order."""
    return {f"t{i}": [f"t{(i - 1) % length}"] for i in range(length)}


# --- building it ------------------------------------------------------------------------------------------------


def test_edges_keep_their_order_in_both_directions() -> None:
    dag = Dag.from_edges([(4, 2), (4, 3), (2, 1), (3, 1)])
    assert list(dag.dependencies(4)) == [2, 3]
    assert list(dag.dependants(1)) == [2, 3]
    assert list(dag.dependants(2)) == [4]
    assert not dag.dependencies(1)  # named only as a dependency
    assert not dag.dependants(4)
    assert not dag.dependencies(99) and not dag.dependants(99)  # not in the graph at all
    assert dag.nodes == (4, 2, 3, 1)  # first named: tasks as they come, then dependencies


def test_nodes_without_edges_come_first_in_their_order() -> None:
    dag = Dag.from_edges([(2, 1)], nodes=[3, 1, 2])
    assert dag.nodes == (3, 1, 2)
    assert not dag.dependencies(3) and not dag.dependants(3)
    assert list(dag.dependencies(2)) == [1]


def test_a_mapping_is_each_tasks_dependencies() -> None:
    dag = Dag({"late": ["early"], "solo": []})
    assert dag.nodes == ("late", "solo", "early")
    assert list(dag.dependants("early")) == ["late"]


# --- descendants ---------------------------------------------------------------------------------------------------


def test_descendants_are_every_task_after_a_node_each_once() -> None:
    dag = Dag(TWO_PARTS)
    assert dag.descendants("a") == ["b", "c", "d"]  # d, after both, listed once
    assert dag.descendants("b") == ["d"]
    assert dag.descendants("d") == []
    assert dag.descendants("e") == ["f"]  # the other part is never reached
    assert dag.descendants("nowhere") == []


def test_descendants_go_depth_first_from_the_last_start() -> None:
    chains = Dag.from_edges([(2, 1), (3, 2), (12, 11), (13, 12), (14, 11)])
    assert chains.descendants(1) == [2, 3]
    assert chains.descendants(11) == [12, 14, 13]  # 11's dependants, then the last one's first
    assert chains.descendants(1, 11) == [12, 14, 13, 2, 3]


def test_descendants_leave_out_the_starts() -> None:
    dag = Dag(DIAMOND)
    assert dag.descendants("a", "b") == ["d", "c"]  # b, a start, is not something found; b's walk goes first
    assert dag.descendants() == []


def test_descendants_only_through_accepted_nodes() -> None:
    dag = Dag({**DIAMOND, "g": ["d"], "h": ["c"]})
    assert dag.descendants("a", through=lambda node: node != "c") == ["b", "d", "g"]  # h only behind c
    assert dag.descendants("a", through=lambda node: node in {"c", "h"}) == ["c", "h"]
    assert dag.descendants("a", through=lambda node: False) == []


def test_descendants_of_a_cycle_end() -> None:
    assert Dag(ring(3)).descendants("t0") == ["t1", "t2"]
    assert Dag({"a": ["a"]}).descendants("a") == []


def test_a_long_chain_is_walked_without_recursion() -> None:
    chain = Dag.from_edges((i, i - 1) for i in range(1, 50_000))
    found = chain.descendants(0)
    assert found == list(range(1, 50_000))


# --- depths --------------------------------------------------------------------------------------------------------


def test_a_stage_is_one_more_than_the_deepest_dependency() -> None:
    assert Dag(DIAMOND).depths() == {"a": 0, "b": 1, "c": 1, "d": 2}
    assert Dag({"x": [], "y": ["x"], "z": ["x", "y"]}).depths() == {"x": 0, "y": 1, "z": 2}
    assert Dag({"z": ["x", "y"], "y": ["x"], "x": []}).depths() == {"x": 0, "y": 1, "z": 2}  # any listing order


def test_depths_of_disconnected_parts_each_start_at_zero() -> None:
    assert Dag(TWO_PARTS).depths() == {"a": 0, "b": 1, "c": 1, "d": 2, "e": 0, "f": 1}
    assert Dag.from_edges([], nodes=[1, 2]).depths() == {1: 0, 2: 0}
    assert Dag.from_edges([]).depths() == {}


def test_depths_of_a_dependency_named_only_as_one() -> None:
    assert Dag.from_edges([(2, 1), (3, 2)]).depths() == {1: 0, 2: 1, 3: 2}


def test_no_depth_on_or_after_a_cycle() -> None:
    dag = Dag({"r": [], "x": ["r", "y"], "y": ["x"], "after": ["y"], "other": ["r"]})
    assert dag.depths() == {"r": 0, "other": 1}


# --- cycles ----------------------------------------------------------------------------------------------------------


def test_no_cycle_in_a_dag() -> None:
    assert Dag({"a": [], "b": ["a"], "c": ["a", "b"]}).find_cycle() is None  # in run order: one pass
    assert Dag({"b": ["a"], "a": [], "c": ["b", "a"]}).find_cycle() is None  # not in run order: sorted
    assert Dag(TWO_PARTS).find_cycle() is None
    assert Dag.from_edges([]).find_cycle() is None
    assert Dag.from_edges([(2, 1), (3, 1)]).find_cycle() is None  # 1 named only as a dependency


def test_a_cycle_is_its_path_in_run_order() -> None:
    assert Dag({"a": ["c"], "b": ["a"], "c": ["b"]}).find_cycle() == ["a", "b", "c", "a"]
    assert Dag({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}).find_cycle() == ["b", "c", "d", "b"]
    assert Dag.from_edges([(1, 2), (2, 3), (3, 1)]).find_cycle() == [1, 3, 2, 1]


def test_a_self_dependency_is_a_cycle() -> None:
    assert Dag({"a": [], "b": ["a"], "c": ["c"]}).find_cycle() == ["c", "c"]
    assert Dag.from_edges([(7, 7)]).find_cycle() == [7, 7]


def test_a_cycle_behind_a_long_run_order_prefix_is_found() -> None:
    prefix = {f"p{i}": [f"p{i - 1}"] if i else [] for i in range(1_000)}
    dag = Dag({**prefix, "x": ["p999", "z"], "y": ["x"], "z": ["y"], "tail": ["z"]})
    assert dag.find_cycle() == ["x", "y", "z", "x"]


def test_a_long_cycle_is_named_whole() -> None:
    cycle = Dag(ring(10_000)).find_cycle()
    assert cycle == [f"t{i}" for i in range(10_000)] + ["t0"]


def test_a_large_plan_in_either_order_has_no_cycle() -> None:
    layered = {f"t{n}": [f"t{n - 10}", f"t{n - 9}"] if n >= 10 else [] for n in range(20_000)}
    assert Dag(layered).find_cycle() is None
    assert Dag(dict(reversed(layered.items()))).find_cycle() is None
