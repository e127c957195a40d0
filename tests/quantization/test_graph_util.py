"""Graph helpers: topological check (with subgraphs), unique naming, producers/consumers."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.util import (
    NameScope,
    check_topological,
    consumers,
    ensure_node_names,
    opset_version,
    producers,
    subgraph_inputs,
)


def _graph(nodes, inputs=("x",), outputs=("y",)):
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in outputs],
    )


def test_producers_consumers():
    g = _graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name="r"),
            helper.make_node("Add", ["a", "a"], ["y"], name="add"),
        ]
    )
    assert producers(g)["a"].name == "r"
    assert [n.name for n in consumers(g)["a"]] == ["add"]  # a node reading twice is one reader


def test_check_topological_reports_order_and_dangling():
    bad_order = _graph(
        [
            helper.make_node("Add", ["a", "x"], ["y"], name="add"),
            helper.make_node("Relu", ["x"], ["a"], name="r"),
        ]
    )
    with pytest.raises(SdkError, match="'add' reads tensor 'a' produced by a later node"):
        check_topological(bad_order)
    dangling = _graph([helper.make_node("Add", ["x", "z"], ["y"], name="add")])
    with pytest.raises(SdkError, match="'z' produced by no node, input or initializer"):
        check_topological(dangling)


def test_subgraph_outer_reads_are_checked():
    then = helper.make_graph(
        [helper.make_node("Identity", ["late"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node("If", ["c"], ["y"], name="if", then_branch=then, else_branch=then),
        helper.make_node("Relu", ["x"], ["late"], name="r"),
    ]
    g = _graph(nodes, inputs=("x", "c"))
    assert subgraph_inputs(nodes[0]) == {"late"}
    with pytest.raises(SdkError, match="'if' reads tensor 'late'"):
        check_topological(g)


def test_unique_names():
    g = _graph(
        [
            helper.make_node("Relu", ["x"], ["a"], name=""),
            helper.make_node("Relu", ["a"], ["b"], name="dup"),
            helper.make_node("Relu", ["b"], ["y"], name="dup"),
        ]
    )
    ensure_node_names(g)
    names = [n.name for n in g.node]
    assert all(names) and len(set(names)) == 3 and names[1] == "dup"
    scope = NameScope(g)
    assert scope.fresh("a") == "a_1" and scope.fresh("a") == "a_2" and scope.fresh("new") == "new"


def test_opset_version():
    m = helper.make_model(_graph([]), opset_imports=[helper.make_opsetid("ai.onnx", 11)])
    assert opset_version(m) == 11 and opset_version(m, "com.microsoft") == 0
