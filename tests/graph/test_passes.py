"""Graph passes on a tiny hand-built graph: each states what it requires and ensures, and run_passes checks both."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from toolchain.graph.passes import (DROP_EXPORT_METADATA, FUSE_ATTENTION, FUSE_GELU, FUSE_MATMUL_BIAS, FUSE_QATTENTION,
                                    FUSE_RANKING_ATTENTION, MS_DOMAIN, NAME_NODES_BY_MODULE, NAME_SCOPES, TIDY,
                                    GraphPassError, run_passes)


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
    model = run_passes(tiny_graph(), TIDY).model
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
    fused = run_passes(gelu_graph(order), [FUSE_GELU]).model
    assert [n.op_type for n in fused.graph.node] == ["Add", "Gelu"]
    assert fused.graph.node[1].domain == MS_DOMAIN and fused.graph.node[1].name == "act/Gelu"
    np.testing.assert_allclose(_run(fused, x)[0], want, atol=1e-6)


def test_fuse_gelu_keeps_a_chain_whose_inner_values_are_used_elsewhere():
    kept = run_passes(gelu_graph(shared=True), [FUSE_GELU]).model
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
    fused = run_passes(int8_matmul_graph(), [FUSE_MATMUL_BIAS]).model
    (node,) = fused.graph.node
    assert node.op_type == "MatMulIntegerToFloat" and node.input[6] == "bias" and node.output[0] == "y"
    np.testing.assert_allclose(_run(fused, a)[0], want, atol=1e-5)


def test_fuse_matmul_bias_leaves_an_add_that_is_not_a_per_column_bias():
    broadcast = int8_matmul_graph(bias_shape=(2, 3))  # a 2-D addend is not the GEMM's bias
    fused = run_passes(broadcast, [FUSE_MATMUL_BIAS]).model
    assert [n.op_type for n in fused.graph.node] == ["MatMulIntegerToFloat", "Add"]


def attention_graph(read_probs: bool = False, heads: int = 2, head_dim: int = 4, mask: str = "mask") -> onnx.ModelProto:
    """x [B, S, D] and mask [B, S] -> Q, K, V projections -> the attention core as torch's exporter writes it
    (split heads, q k^T, Div, additive mask bias, Softmax, context, merge heads) -> y; `read_probs`: the
    probabilities are also summed into an output, as a layer that drops tokens reads them for significance."""
    d = heads * head_dim
    rng = np.random.default_rng(0)
    weight = lambda name: helper.make_tensor(name, TensorProto.FLOAT, [d, d], rng.normal(0, 0.3, d * d).tolist())  # noqa: E731
    nodes = [helper.make_node("MatMul", ["x", f"w{p}"], [p], name=f"self.{p}/MatMul") for p in "qkv"]
    nodes += [helper.make_node("Reshape", [p, "split"], [f"{p}4"], name=f"self/Reshape_{p}") for p in "qkv"]
    nodes += [helper.make_node("Transpose", [f"{p}4"], [f"{p}t"], name=f"self/Transpose_{p}",
                               perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]) for p in "qkv"]
    nodes += [helper.make_node("Cast", [mask], ["maskf"], name="graph/Cast", to=TensorProto.FLOAT),
              helper.make_node("Sub", ["one", "maskf"], ["inv"], name="graph/Sub"),
              helper.make_node("Unsqueeze", ["inv", "axes"], ["inv4"], name="graph/Unsqueeze"),
              helper.make_node("Mul", ["inv4", "neg"], ["bias"], name="graph/Mul"),
              helper.make_node("MatMul", ["qt", "kt"], ["scores"], name="self/MatMul"),
              helper.make_node("Div", ["scores", "root"], ["scaled"], name="self/Div"),
              helper.make_node("Add", ["scaled", "bias"], ["masked"], name="self/Add"),
              helper.make_node("Softmax", ["masked"], ["probs"], name="self/Softmax", axis=-1),
              helper.make_node("MatMul", ["probs", "vt"], ["context"], name="self/MatMul_1"),
              helper.make_node("Transpose", ["context"], ["merged"], name="self/Transpose", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["merged", "merge"], ["y"], name="self/Reshape")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", d])]
    if read_probs:
        nodes.append(helper.make_node("ReduceSum", ["probs", "sum_axes"], ["received"], name="drop/ReduceSum"))
        outputs.append(helper.make_tensor_value_info("received", TensorProto.FLOAT, ["B", "S"]))
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    scalar = lambda name, v: helper.make_tensor(name, TensorProto.FLOAT, [], [v])  # noqa: E731
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", d]),
                     helper.make_tensor_value_info(mask, TensorProto.INT64, ["B", "S"])], outputs,
        [weight("wq"), weight("wk"), weight("wv"), ints("split", [0, 0, heads, head_dim]), ints("merge", [0, 0, d]),
         ints("axes", [1, 2]), ints("sum_axes", [1, 2] if read_probs else []), scalar("one", 1.0), scalar("neg", -10000.0),
         scalar("root", head_dim ** 0.5)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_fuse_attention_replaces_the_core_by_one_node_with_the_same_values():
    from toolchain.graph.passes import FUSE_ATTENTION

    rng = np.random.default_rng(1)
    mask = np.ones((2, 5), np.int64)
    mask[1, 3:] = 0  # padding must stay masked
    feeds = {"x": rng.normal(size=(2, 5, 8)).astype(np.float32), "mask": mask}
    want = _run(attention_graph(), feeds)[0]
    fused = run_passes(attention_graph(), [FUSE_ATTENTION]).model
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops and "Transpose" not in ops
    (mha,) = [n for n in fused.graph.node if n.op_type == "MultiHeadAttention"]
    assert list(mha.input[:3]) == ["q", "k", "v"] and mha.output[0] == "y" and mha.domain == MS_DOMAIN
    np.testing.assert_allclose(_run(fused, feeds)[0], want, atol=1e-5)
    onnx.checker.check_model(fused)


def test_fuse_attention_keeps_a_core_whose_probabilities_are_read():
    from toolchain.graph.passes import FUSE_ATTENTION

    kept = run_passes(attention_graph(read_probs=True), [FUSE_ATTENTION]).model
    assert [n.op_type for n in kept.graph.node] == [n.op_type for n in attention_graph(read_probs=True).graph.node]


def test_fuse_ranking_attention_runs_a_ranking_core_as_one_attention_with_the_same_values():
    """Right-padded rows take the fused core (per-row key lengths); a mask with a hole takes the written-out core."""
    from toolchain.graph.passes import FUSE_RANKING_ATTENTION

    rng = np.random.default_rng(2)
    right_padded = np.ones((3, 6), np.int64)
    right_padded[1, 4:] = 0
    right_padded[2, 1:] = 0
    holed = right_padded.copy()
    holed[0, 2] = 0
    graph = lambda: attention_graph(read_probs=True, mask="attention_mask")  # noqa: E731
    fused = run_passes(graph(), [FUSE_RANKING_ATTENTION]).model
    (guard,) = [n for n in fused.graph.node if n.op_type == "If"]
    branches = {a.name: [n.op_type for n in a.g.node] for a in guard.attribute}
    then_ops = branches["then_branch"]
    assert "Softmax" in branches["else_branch"]
    assert then_ops == ["Attention"] and "Softmax" not in [n.op_type for n in fused.graph.node]
    assert {o.version for o in fused.opset_import if o.domain == ""} == {24}
    onnx.checker.check_model(fused)
    fused.graph.output.append(helper.make_tensor_value_info(guard.input[0], TensorProto.BOOL, []))  # which branch ran
    no_rows = np.zeros((3, 6), np.int64)
    no_rows[0] = 1  # a row of padding only: no keys to attend to, so the written-out core runs
    for mask, fast in ((right_padded, True), (holed, False), (no_rows, False)):
        feeds = {"x": rng.normal(size=(3, 6, 8)).astype(np.float32), "attention_mask": mask}
        *got, took_fused = _run(fused, feeds)
        assert bool(took_fused) is fast
        for g, want in zip(got, _run(graph(), feeds)):
            np.testing.assert_allclose(g, want, atol=1e-5)


def test_fuse_ranking_attention_needs_the_input_mask_and_leaves_other_cores():
    from toolchain.graph.passes import FUSE_RANKING_ATTENTION

    with pytest.raises(GraphPassError, match="fuse-ranking-attention requires .* no attention_mask input"):
        run_passes(attention_graph(read_probs=True), [FUSE_RANKING_ATTENTION])
    untouched = run_passes(attention_graph(mask="attention_mask"), [FUSE_RANKING_ATTENTION]).model  # nothing ranks here
    assert [n.op_type for n in untouched.graph.node] == [n.op_type for n in attention_graph(mask="attention_mask").graph.node]
    assert {o.version for o in untouched.opset_import if o.domain == ""} == {18}


def test_an_opset_24_graph_needs_an_onnxruntime_that_reads_key_lengths():
    from qtool_runtime.contract import onnxruntime_problem

    assert "install onnxruntime>=1.25" in onnxruntime_problem(24, "1.24.4")
    assert onnxruntime_problem(24, "1.25.0") is None and onnxruntime_problem(18, "1.20.1") is None


def static_qkv_graph(heads: int = 2, head_dim: int = 4) -> onnx.ModelProto:
    """a (uint8 [B, S, D], quantized once) -> Q, K, V static INT8 GEMMs (per-column scales, biases inside) ->
    MultiHeadAttention with a key mask -> y, as a full static INT8 graph runs a layer's attention."""
    d = heads * head_dim
    rng = np.random.default_rng(2)
    inits = [helper.make_tensor("a_scale", TensorProto.FLOAT, [], [0.05]),
             helper.make_tensor("a_zp", TensorProto.UINT8, [], [120])]
    nodes = []
    for p in "qkv":
        inits += [helper.make_tensor(f"w{p}", TensorProto.INT8, [d, d], rng.integers(-127, 128, d * d).tolist()),
                  helper.make_tensor(f"s{p}", TensorProto.FLOAT, [d], rng.uniform(1e-3, 4e-3, d).tolist()),
                  helper.make_tensor(f"z{p}", TensorProto.INT8, [d], [0] * d),
                  helper.make_tensor(f"b{p}", TensorProto.FLOAT, [d], rng.normal(0, 0.1, d).tolist())]
        nodes.append(helper.make_node("MatMulIntegerToFloat", ["a", f"w{p}", "a_scale", f"s{p}", "a_zp", f"z{p}", f"b{p}"],
                                      [p], name=f"layer.0.attention.self.{p}/MatMul_quant", domain=MS_DOMAIN))
    nodes.append(helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "mask"], ["y"], name="graph/MultiHeadAttention",
                                  domain=MS_DOMAIN, num_heads=heads, scale=head_dim ** -0.5, mask_filter_value=-10000.0))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, ["B", "S", d]),
                                           helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)])


def _qkv_feeds() -> dict:
    rng = np.random.default_rng(3)
    mask = np.ones((2, 5), np.int32)
    mask[1, 3:] = 0  # padding stays masked
    return {"a": rng.integers(0, 256, (2, 5, 8)).astype(np.uint8), "mask": mask}


def test_fuse_qattention_runs_static_qkv_and_attention_as_one_node_with_the_same_values():
    from toolchain.graph.passes import FUSE_QATTENTION

    feeds = _qkv_feeds()
    want = _run(static_qkv_graph(), feeds)[0]
    fused = run_passes(static_qkv_graph(), [FUSE_QATTENTION]).model
    (node,) = fused.graph.node
    assert node.op_type == "QAttention" and node.name == "layer.0.attention.self/QAttention" and node.output[0] == "y"
    assert {i.name for i in fused.graph.initializer} >= {node.input[1], node.input[2]} and len(fused.graph.initializer) == 6
    np.testing.assert_allclose(_run(fused, feeds)[0][1, :3], want[1, :3], atol=1e-5)  # real rows of the padded window
    np.testing.assert_allclose(_run(fused, feeds)[0][0], want[0], atol=1e-5)
    onnx.checker.check_model(fused)


def test_fuse_qattention_leaves_projections_read_elsewhere():
    from toolchain.graph.passes import FUSE_QATTENTION

    model = static_qkv_graph()
    model.graph.output.append(helper.make_tensor_value_info("q", TensorProto.FLOAT, ["B", "S", 8]))  # q read twice
    assert [n.op_type for n in run_passes(model, [FUSE_QATTENTION]).model.graph.node].count("QAttention") == 0


def two_gelu_graph() -> onnx.ModelProto:
    """gelu_graph with a second written-out GELU on the first one's output: two sites for fuse-gelu."""
    model = gelu_graph()
    renamed = {"h": "g", "d": "d2", "e": "e2", "p": "p2", "m": "m2"}
    chain = [onnx.NodeProto() for _ in range(5)]
    for copy, node in zip(chain, model.graph.node[1:]):
        copy.CopyFrom(node)
        copy.name = node.name.replace("act/", "act2/")
        copy.input[:] = [renamed.get(i, i) for i in copy.input]
        copy.output[:] = [renamed.get(o, o) for o in copy.output]
    model.graph.node[-1].output[0] = "g"
    model.graph.node.extend(chain)
    return model


def test_run_passes_counts_each_pass_s_rewrites_and_names_the_idle_ones():
    x = {"x": np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)}
    want = _run(two_gelu_graph(), x)[0]
    assert FUSE_GELU.sites(two_gelu_graph()) == 2
    run = run_passes(two_gelu_graph(), [FUSE_GELU])
    assert run.rewrites == {"fuse-gelu": 2} and run.idle == ()
    assert [n.op_type for n in run.model.graph.node] == ["Add", "Gelu", "Gelu"]
    np.testing.assert_allclose(_run(run.model, x)[0], want, atol=1e-6)
    run = run_passes(two_gelu_graph(), [FUSE_MATMUL_BIAS, FUSE_GELU])  # no INT8 GEMM here
    assert run.rewrites == {"fuse-matmul-bias": 0, "fuse-gelu": 2} and run.idle == ("fuse-matmul-bias",)


def test_tidy_counts_the_nodes_it_renames_and_the_metadata_it_drops():
    run = run_passes(tiny_graph(), TIDY)
    # three names change; four metadata entries go (two name scopes, a stack trace, the model's) and the graph is signed
    assert run.rewrites == {"name-nodes-by-module": 3, "drop-export-metadata": 5}
    named = run_passes(tiny_graph(), [NAME_NODES_BY_MODULE]).model
    assert run_passes(named, [NAME_NODES_BY_MODULE]).rewrites == {"name-nodes-by-module": 0}


def ranking_graph() -> onnx.ModelProto:
    return attention_graph(read_probs=True, mask="attention_mask")


@pytest.mark.parametrize("build, passes, first", [
    (two_gelu_graph, [FUSE_MATMUL_BIAS, FUSE_GELU], {"fuse-matmul-bias": 0, "fuse-gelu": 2}),
    (int8_matmul_graph, [FUSE_MATMUL_BIAS, FUSE_GELU], {"fuse-matmul-bias": 1, "fuse-gelu": 0}),
    (attention_graph, [FUSE_GELU, FUSE_ATTENTION], {"fuse-gelu": 0, "fuse-attention": 1}),
    (static_qkv_graph, [FUSE_MATMUL_BIAS, FUSE_QATTENTION, FUSE_RANKING_ATTENTION],
     {"fuse-matmul-bias": 0, "fuse-qattention": 1, "fuse-ranking-attention": 0}),
    (ranking_graph, [FUSE_ATTENTION, FUSE_RANKING_ATTENTION], {"fuse-attention": 0, "fuse-ranking-attention": 1}),
], ids=["gelu", "matmul-bias", "attention", "qattention", "ranking-attention"])
def test_a_second_run_over_the_rewritten_graph_rewrites_nothing(build, passes, first):
    run = run_passes(build(), passes)
    assert run.rewrites == first
    rewritten = run.model.SerializeToString()
    again = run_passes(run.model, passes)
    assert again.rewrites == {p.name: 0 for p in passes} and again.idle == tuple(p.name for p in passes)
    assert again.model.SerializeToString() == rewritten


def test_a_pass_listed_twice_is_refused():
    with pytest.raises(GraphPassError, match="fuse-gelu listed more than once"):
        run_passes(gelu_graph(), [FUSE_GELU, FUSE_GELU])
