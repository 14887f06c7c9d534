"""fuse-ranking-attention: the written-out attention core of a layer that ranks its tokens (its probabilities also
feed the significance, so fuse-attention leaves it) becomes one ONNX Attention (opset 24) that writes the context
and the probabilities, the key padding as per-row lengths instead of an additive bias: no head transposes, no mask
added to the scores, one kernel. Lengths say what the mask says only for right-padded input, so each fused core
runs under an If that checks it, and the written-out core runs otherwise. Raises the graph's opset to 24."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from qtool_runtime.contract import ATTENTION_OPSET, onnxruntime_problem

from ...artifact.artifact import opset_of
from .framework import GraphPass
from .fuse_attention import AttentionCore, core_at
from .graph_utils import (add_initializers, consumers, drop_unused_initializers, free_name, free_tensor_name, has_nodes,
                          matches, none_left, producers, sort_nodes)


@dataclass(frozen=True)
class _RankingCore:
    """A layer's attention core whose probabilities also feed the ranking (significance)."""

    core: AttentionCore
    softmax: onnx.NodeProto


def _ranking_cores(model: onnx.ModelProto) -> list[_RankingCore]:
    """Each written-out core whose probabilities feed the context MatMul and one other reader (the significance)."""
    users = consumers(model.graph)
    producer = producers(model.graph)
    cores = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        readers = users.get(softmax.output[0], [])
        context = next((r for r in readers if r is not None and r.op_type == "MatMul" and r.input[0] == softmax.output[0]), None)
        if context is None or len(readers) != 2 or None in readers:
            continue
        core = core_at(model, users, producer, softmax, context)
        if core is not None:
            cores.append(_RankingCore(core, softmax))
    return cores


def _attention_opset_supported(model: onnx.ModelProto) -> str | None:
    """onnx must know ATTENTION_OPSET and the installed onnxruntime must run it right (`contract.onnxruntime_problem`);
    the graph must not be stamped with a later opset (the pass raises the graph's opset to ATTENTION_OPSET)."""
    import onnxruntime

    if onnx.defs.onnx_opset_version() < ATTENTION_OPSET:
        return f"onnx {onnx.__version__} does not know opset {ATTENTION_OPSET}"
    if opset_of(model) > ATTENTION_OPSET:
        return f"the graph is opset {opset_of(model)}"
    return onnxruntime_problem(ATTENTION_OPSET, onnxruntime.__version__)


def _key_lengths(model: onnx.ModelProto, key_mask: str, last_axis: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that count each row's real keys (the [B, T] 0/1 mask summed) as int64 `nonpad_kv_seqlen`."""
    count, lengths = free_tensor_name(model, f"{key_mask}_count"), free_tensor_name(model, f"{key_mask}_lengths")
    return [helper.make_node("ReduceSum", [key_mask, last_axis], [count], keepdims=0, name=free_name(model, "key_lengths/ReduceSum")),
            helper.make_node("Cast", [count], [lengths], name=free_name(model, "key_lengths/Cast"), to=onnx.TensorProto.INT64)], lengths


def _right_padded(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that decide whether every row of the input `attention_mask` is real tokens then padding (what every
    tokenizer qtool supports writes) with at least one real token (a row of padding only attends uniformly in the
    written-out core, to nothing in the fused one): a bool scalar. Then a ranking layer's keys hold their real tokens first in
    every layer: the first layer's in input order; a later layer's in a TopK's order, where significance ranks padding
    below every real token (`toolchain.model.drop_and_restore`; its question and [CLS] ranks are by position, real under right
    padding), so `nonpad_kv_seqlen` says exactly what the key mask says."""
    at = free_tensor_name(model, "attention_mask_right_padded")
    zero, one, axis0, axis1, zero_f = add_initializers(model, at, {
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64), "zero_f": np.array(0.0, np.float32)})
    names = {k: f"{at}_{k}" for k in ("mask", "count", "lengths", "shape", "width", "positions", "row", "column",
                                       "prefix", "prefix_f", "diff", "abs", "worst", "layout", "fewest", "keys")}
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [names["mask"]], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", [names["mask"], axis1], [names["count"]], keepdims=0),
        helper.make_node("Cast", [names["count"]], [names["lengths"]], to=onnx.TensorProto.INT64),
        helper.make_node("Shape", [names["mask"]], [names["shape"]], start=1, end=2),
        helper.make_node("Squeeze", [names["shape"]], [names["width"]]),
        helper.make_node("Range", [zero, names["width"], one], [names["positions"]]),
        helper.make_node("Unsqueeze", [names["positions"], axis0], [names["row"]]),
        helper.make_node("Unsqueeze", [names["lengths"], axis1], [names["column"]]),
        helper.make_node("Less", [names["row"], names["column"]], [names["prefix"]]),
        helper.make_node("Cast", [names["prefix"]], [names["prefix_f"]], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sub", [names["mask"], names["prefix_f"]], [names["diff"]]),
        helper.make_node("Abs", [names["diff"]], [names["abs"]]),
        helper.make_node("ReduceMax", [names["abs"]], [names["worst"]], keepdims=0),
        helper.make_node("Equal", [names["worst"], zero_f], [names["layout"]]),
        helper.make_node("ReduceMin", [names["lengths"]], [names["fewest"]], keepdims=0),
        helper.make_node("Greater", [names["fewest"], zero], [names["keys"]]),
        helper.make_node("And", [names["layout"], names["keys"]], [at]),
    ]
    for node in nodes:
        node.name = free_name(model, f"key_layout/{node.output[0]}")
    return nodes, at


def _fused_core(ranking: _RankingCore, lengths: str, context: str, probs: str, name: str) -> onnx.NodeProto:
    """The one ONNX Attention node of a ranking core: context and probabilities (its fourth output)."""
    core = ranking.core
    return helper.make_node(
        "Attention", [core.q, core.k, core.v, "", "", "", lengths], [context, "", "", probs], name=name,
        q_num_heads=core.heads, kv_num_heads=core.heads, scale=core.scale, qk_matmul_output_mode=3)


def _guarded_core(model: onnx.ModelProto, ranking: _RankingCore, lengths: str, right_padded: str) -> onnx.NodeProto:
    """If(right_padded): the fused core; else the written-out core as it was (exact for any mask)."""
    core, context, probs = ranking.core, ranking.core.nodes[-1].output[0], ranking.softmax.output[0]

    def branch(nodes: list[onnx.NodeProto], outputs: list[str], name: str) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs])

    fused = [f"{context}_fused", f"{probs}_fused"]
    written = {context: f"{context}_written", probs: f"{probs}_written"}
    in_order = (*core.nodes[:-3], ranking.softmax, *core.nodes[-3:])  # the Softmax before the context MatMul
    chain = [onnx.NodeProto() for _ in in_order]
    for copy, node in zip(chain, in_order):
        copy.CopyFrom(node)
        copy.input[:] = [written.get(i, i) for i in copy.input]
        copy.output[:] = [written.get(o, o) for o in copy.output]
    name = free_name(model, f"{core.nodes[-1].name.rsplit('/', 1)[0]}/If")
    return helper.make_node(
        "If", [right_padded], [context, probs], name=name,
        then_branch=branch([_fused_core(ranking, lengths, *fused, name=f"{name}/Attention")], fused, "right_padded"),
        else_branch=branch(chain, list(written.values()), "any_padding"))


def _fuse_ranking_attention(model: onnx.ModelProto) -> None:
    """Each ranking core becomes If(the input is right-padded): one ONNX Attention that writes the context and the
    probabilities the significance reads, the key padding as per-row lengths instead of an additive bias; else the
    written-out core as it was, exact for any mask. Stale shapes of rewritten tensors are dropped (onnxruntime
    infers them again)."""
    graph = model.graph
    cores = _ranking_cores(model)
    if not cores:
        return
    axis = add_initializers(model, "ranking_attention", {"last_axis": np.array([-1], dtype=np.int64)})[0]
    new, right_padded = _right_padded(model)
    lengths: dict[str, str] = {}
    for ranking in cores:
        core, softmax = ranking.core, ranking.softmax
        if core.key_mask not in lengths:
            nodes, lengths[core.key_mask] = _key_lengths(model, core.key_mask, axis)
            new += nodes
        new.append(_guarded_core(model, ranking, lengths[core.key_mask], right_padded))
        for node in core.nodes:
            graph.node.remove(node)
        at = list(graph.node).index(softmax)  # q, k, v and the key mask are written before it, its readers after
        graph.node.remove(softmax)
        for node in reversed(new):
            graph.node.insert(at, node)
        new = []
    sort_nodes(graph)  # the If went where the Softmax was; a V projection written after it moves ahead
    rewritten = {r.softmax.output[0] for r in cores} | {o for r in cores for n in r.core.nodes for o in n.output}
    for info in [v for v in graph.value_info if v.name in rewritten]:
        graph.value_info.remove(info)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = ATTENTION_OPSET
    drop_unused_initializers(model)


def _requires_attention_opset(model: onnx.ModelProto) -> str | None:
    if not _ranking_cores(model):
        return has_nodes(model)
    if "attention_mask" not in {i.name for i in model.graph.input}:
        return "the graph has no attention_mask input"
    return _attention_opset_supported(model)


FUSE_RANKING_ATTENTION = GraphPass(
    "fuse-ranking-attention",
    "Replace the written-out attention core of a layer that ranks its tokens (its probabilities also feed the "
    "significance) by one ONNX Attention (opset 24) that writes the context and the probabilities, with the key "
    "padding as per-row lengths: no head transposes, no mask added to the scores, one kernel. The lengths say what the mask "
    "says when the input is right-padded (every supported tokenizer's padding), so each fused core runs under an If "
    "that checks it, and the written-out core runs otherwise. "
    "Raises the graph's opset to 24 where it rewrites. The same values; the reduced `315,...` graph 8 % faster at "
    "384 tokens (results/ranking-attention).",
    requires=_requires_attention_opset, run=_fuse_ranking_attention,
    ensures=none_left(_ranking_cores, "written-out ranking attention cores"), sites=matches(_ranking_cores))

