"""Graph passes on a tiny hand-built graph: each states what it requires and ensures, and run_passes checks both."""

import dataclasses

import onnx
import pytest
from onnx import TensorProto, helper

from toolchain.passes import DROP_EXPORT_METADATA, NAME_NODES_BY_MODULE, NAME_SCOPES, TIDY, GraphPassError, run_passes


def tiny_graph() -> onnx.ModelProto:
    """x -> MatMul (layer.0 dense) -> MatMul (layer.0 dense again) -> Relu (no scope recorded) -> y."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="node_0"),
             helper.make_node("MatMul", ["a", "w"], ["b"], name="node_1"),
             helper.make_node("Relu", ["b"], ["y"], name="node_2")]
    for node in nodes[:2]:
        entry = node.metadata_props.add()
        entry.key, entry.value = NAME_SCOPES, "['', 'model.bert.encoder.layer.0.output.dense', 'matmul']"
    trace = nodes[2].metadata_props.add()
    trace.key, trace.value = "pkg.torch.onnx.stack_trace", "File /home/someone/train.py, line 3"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])])
    model = helper.make_model(graph, producer_name="pytorch")
    meta = model.metadata_props.add()
    meta.key, meta.value = "exporter", "/tmp/scratch"
    return model


def test_tidy_names_nodes_by_module_and_drops_metadata():
    model = run_passes(tiny_graph(), TIDY)
    assert [n.name for n in model.graph.node] == ["model.bert.encoder.layer.0.output.dense/MatMul",
                                                  "model.bert.encoder.layer.0.output.dense/MatMul_1", "graph/Relu"]
    assert not any(n.metadata_props for n in model.graph.node) and not model.metadata_props
    assert model.producer_name == "qtool"
    onnx.checker.check_model(model)


def test_a_pass_whose_requirement_fails_stops_with_its_name():
    empty = tiny_graph()
    del empty.graph.node[:]
    with pytest.raises(GraphPassError, match="name-nodes-by-module requires.*no nodes"):
        run_passes(empty, TIDY)


def test_a_pass_that_breaks_its_promise_is_caught():
    lazy = dataclasses.replace(DROP_EXPORT_METADATA, run=lambda model: None)  # forgets to drop anything
    with pytest.raises(GraphPassError, match="drop-export-metadata did not ensure.*metadata entries remain"):
        run_passes(tiny_graph(), [NAME_NODES_BY_MODULE, lazy])
    # and names are checked too: a pass that leaves duplicate names does not get through
    clash = dataclasses.replace(NAME_NODES_BY_MODULE, run=lambda model: [setattr(n, "name", "same") for n in model.graph.node])
    with pytest.raises(GraphPassError, match="node names repeat"):
        run_passes(tiny_graph(), [clash])
