"""Graph passes on a tiny hand-built graph: each states what it requires and ensures, and run_passes checks both."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from toolchain.passes import (DROP_EXPORT_METADATA, FUSE_GELU, FUSE_MATMUL_BIAS, MS_DOMAIN, NAME_NODES_BY_MODULE,
                              NAME_SCOPES, TIDY, GraphPassError, run_passes)


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


def gelu_graph(order: str = "half-then-x", shared: bool = False) -> onnx.ModelProto:
    """x [2, 3] -> Add(bias) -> exact GELU written out as the exporter does (Div, Erf, Add, Mul, Mul) -> y."""
    half_first = order == "half-then-x"
    nodes = [helper.make_node("Add", ["x", "bias"], ["h"], name="ffn/Add"),
             helper.make_node("Div", ["h", "sqrt2"], ["d"], name="act/Div"),
             helper.make_node("Erf", ["d"], ["e"], name="act/Erf"),
             helper.make_node("Add", ["e", "one"], ["p"], name="act/Add"),
             helper.make_node("Mul", ["half", "p"] if half_first else ["h", "p"], ["m"], name="act/Mul"),
             helper.make_node("Mul", ["h", "m"] if half_first else ["m", "half"], ["y"], name="act/Mul_1")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    if shared:  # the Erf's output is also a graph output: the chain must stay
        outputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3]))
    scalar = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])], outputs,
                              [helper.make_tensor("bias", TensorProto.FLOAT, [3], [0.1, -0.2, 0.3]),
                               scalar("sqrt2", 2 ** 0.5), scalar("one", 1.0), scalar("half", 0.5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("order", ["half-then-x", "x-then-half"])
def test_fuse_gelu_replaces_the_written_out_gelu_by_one_node_with_the_same_values(order):
    x = {"x": np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)}
    want = _run(gelu_graph(order), x)[0]
    fused = run_passes(gelu_graph(order), [FUSE_GELU])
    assert [n.op_type for n in fused.graph.node] == ["Add", "Gelu"]
    assert fused.graph.node[1].domain == MS_DOMAIN and fused.graph.node[1].name == "act/Gelu"
    np.testing.assert_allclose(_run(fused, x)[0], want, atol=1e-6)


def test_fuse_gelu_keeps_a_chain_whose_inner_values_are_used_elsewhere():
    kept = run_passes(gelu_graph(shared=True), [FUSE_GELU])
    assert [n.op_type for n in kept.graph.node] == ["Add", "Div", "Erf", "Add", "Mul", "Mul"]
    assert {i.name for i in kept.graph.initializer} == {"bias", "sqrt2", "one", "half"}


def test_fuse_gelu_that_leaves_a_fusable_chain_is_caught():
    lazy = dataclasses.replace(FUSE_GELU, run=lambda model: None)
    with pytest.raises(GraphPassError, match="fuse-gelu did not ensure.*1 written-out GELUs remain"):
        run_passes(gelu_graph(), [lazy])


def int8_matmul_graph(bias_shape: tuple[int, ...] = (3,)) -> onnx.ModelProto:
    """a (uint8) x w (int8 constant) -> MatMulIntegerToFloat -> Add(bias) -> y: a static INT8 weight MatMul."""
    nodes = [helper.make_node("MatMulIntegerToFloat", ["a", "w", "a_scale", "w_scale", "a_zp", "w_zp"], ["mm"],
                              name="dense/MatMul_quant", domain=MS_DOMAIN),
             helper.make_node("Add", ["mm", "bias"], ["y"], name="dense/Add")]
    size = int(np.prod(bias_shape))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("w", TensorProto.INT8, [4, 3], list(range(-6, 6))),
         helper.make_tensor("a_scale", TensorProto.FLOAT, [], [0.02]), helper.make_tensor("w_scale", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("a_zp", TensorProto.UINT8, [], [128]), helper.make_tensor("w_zp", TensorProto.INT8, [], [0]),
         helper.make_tensor("bias", TensorProto.FLOAT, list(bias_shape), [0.5 * i for i in range(size)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)])


def test_fuse_matmul_bias_moves_the_bias_into_the_gemm_with_the_same_values():
    a = {"a": np.arange(8, dtype=np.uint8).reshape(2, 4) * 30}
    want = _run(int8_matmul_graph(), a)[0]
    fused = run_passes(int8_matmul_graph(), [FUSE_MATMUL_BIAS])
    (node,) = fused.graph.node
    assert node.op_type == "MatMulIntegerToFloat" and node.input[6] == "bias" and node.output[0] == "y"
    np.testing.assert_allclose(_run(fused, a)[0], want, atol=1e-5)


def test_fuse_matmul_bias_leaves_an_add_that_is_not_a_per_column_bias():
    broadcast = int8_matmul_graph(bias_shape=(2, 3))  # a 2-D addend is not the GEMM's bias
    fused = run_passes(broadcast, [FUSE_MATMUL_BIAS])
    assert [n.op_type for n in fused.graph.node] == ["MatMulIntegerToFloat", "Add"]
