"""fuse-attention: each attention core torch's exporter writes out (split heads, q k^T, scale, mask bias, Softmax,
context, merge heads) becomes one onnxruntime MultiHeadAttention fed by the Q, K, V projections, one kernel per
layer as in the standard recipe's graph. Only where the probabilities feed the context alone: a layer that drops
tokens reads them for significance and keeps its core (fuse-ranking-attention's, which finds cores with `core_at`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx
from onnx import helper

from .framework import GraphPass
from .graph_utils import (MS_DOMAIN, constant, consumers, drop_unused_initializers, free_name, has_nodes,
                          import_contrib_ops, is_scalar, matches, none_left, only_user, other, producers)


@dataclass(frozen=True)
class AttentionCore:
    """One layer's attention core, softmax(q k^T / c + mask bias) v, written out by the exporter, and what the
    fused node needs: the projections' outputs, heads, scale, the [B, T] float key mask and its filter value."""

    nodes: tuple[onnx.NodeProto, ...]  # every node the fused one replaces, the final Reshape last
    q: str
    k: str
    v: str
    heads: int
    scale: float
    key_mask: str
    filter_value: float


def _is_transpose(node: onnx.NodeProto | None, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and [a.ints for a in node.attribute if a.name == "perm"] == [perm]


def _transposed(producer: dict, name: str, perm: list[int]) -> onnx.NodeProto | None:
    """The Transpose with `perm` that writes `name`, else None."""
    node = producer.get(name)
    return node if _is_transpose(node, perm) else None


def _heads(model: onnx.ModelProto, producer: dict, reshape: onnx.NodeProto) -> int | None:
    """The head count a [B, n, heads, head_dim] Reshape splits into (a constant shape or a Concat of parts)."""
    shape = constant(model, reshape.input[1])
    if shape is not None and shape.size == 4:
        return int(shape[2])
    concat = producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    part = constant(model, concat.input[2])
    return int(part.reshape(-1)[0]) if part is not None and part.size == 1 else None


def _key_mask(model: onnx.ModelProto, producer: dict, bias: str) -> tuple[str, float] | None:
    """([B, T] float mask of 0/1, filter value) when `bias` is (1 - mask)[:, None, None, :] * filter_value."""
    mul = producer.get(bias)
    if mul is None or mul.op_type != "Mul":
        return None
    for name, factor in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        value, unsqueeze = constant(model, factor), producer.get(name)
        if value is None or value.size != 1 or float(value.reshape(())) > -1e3:
            continue
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
            continue
        axes = constant(model, unsqueeze.input[1])
        sub = producer.get(unsqueeze.input[0])
        if axes is not None and sorted(axes.reshape(-1).tolist()) == [1, 2] and sub is not None and (
                sub.op_type == "Sub" and is_scalar(model, sub.input[0], 1.0)):
            return sub.input[1], float(value.reshape(()))
    return None


def core_at(model: onnx.ModelProto, users: dict, producer: dict, softmax: onnx.NodeProto,
            context: onnx.NodeProto) -> AttentionCore | None:
    """The written-out core around `softmax` and its `context` MatMul, when every tensor of the chain but the
    probabilities has one reader (the Softmax is not among the core's nodes: its readers differ by caller)."""
    add = producer.get(softmax.input[0])
    if context.input[0] != softmax.output[0] or add is None or add.op_type != "Add":
        return None
    div = next((producer[i] for i in add.input if i in producer and producer[i].op_type == "Div"), None)
    scores = div and producer.get(div.input[0])
    divisor = div and constant(model, div.input[1])
    if scores is None or scores.op_type != "MatMul" or divisor is None or divisor.size != 1:
        return None
    q_t, k_t = _transposed(producer, scores.input[0], [0, 2, 1, 3]), _transposed(producer, scores.input[1], [0, 2, 3, 1])
    v_t = _transposed(producer, context.input[1], [0, 2, 1, 3])
    out_t = only_user(users, context.output[0], "Transpose")
    out = out_t and only_user(users, out_t.output[0], "Reshape")
    splits = [t and producer.get(t.input[0]) for t in (q_t, k_t, v_t)]
    mask = _key_mask(model, producer, other(add, div.output[0]))
    if out is None or mask is None or any(r is None or r.op_type != "Reshape" for r in splits):
        return None
    chain = (*splits, q_t, k_t, v_t, scores, div, add, context, out_t)
    if any(len(users.get(o, [])) != 1 for n in chain for o in n.output) or not _is_transpose(out_t, [0, 2, 1, 3]):
        return None
    heads = _heads(model, producer, splits[0])
    if heads is None:
        return None
    return AttentionCore((*chain, out), splits[0].input[0], splits[1].input[0], splits[2].input[0],
                         heads, 1.0 / float(divisor.reshape(())), *mask)


def _attention_cores(model: onnx.ModelProto) -> list[AttentionCore]:
    """Each attention core whose probabilities feed only the context MatMul (a layer that drops tokens reads them
    for significance, so its core is fuse-ranking-attention's); every intermediate tensor has one reader."""
    users = consumers(model.graph)
    producer = producers(model.graph)
    cores = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        context = only_user(users, softmax.output[0], "MatMul")
        core = context and core_at(model, users, producer, softmax, context)
        if core is not None:
            cores.append(replace(core, nodes=(*core.nodes[:-3], softmax, *core.nodes[-3:])))
    return cores


def _fuse_attention(model: onnx.ModelProto) -> None:
    graph = model.graph
    key_masks: dict[str, str] = {}
    for core in _attention_cores(model):
        out = core.nodes[-1]
        module = out.name.rsplit("/", 1)[0]
        fused = [helper.make_node(
            "MultiHeadAttention", [core.q, core.k, core.v, "", ""], [out.output[0]],
            name=free_name(model, f"{module}/MultiHeadAttention"), domain=MS_DOMAIN, num_heads=core.heads,
            scale=core.scale, mask_filter_value=core.filter_value)]
        if core.key_mask not in key_masks:
            key_masks[core.key_mask] = f"{core.key_mask}_int32"
            fused.insert(0, helper.make_node("Cast", [core.key_mask], [key_masks[core.key_mask]],
                                             name=free_name(model, "key_mask/Cast"), to=onnx.TensorProto.INT32))
        fused[-1].input[4] = key_masks[core.key_mask]
        at = list(graph.node).index(out)
        for node in core.nodes:
            graph.node.remove(node)
        at -= len(core.nodes) - 1
        for node in reversed(fused):
            graph.node.insert(at, node)
    import_contrib_ops(model)
    drop_unused_initializers(model)


FUSE_ATTENTION = GraphPass(
    "fuse-attention",
    "Replace each written-out attention core (split heads, q k^T, scale, mask bias, Softmax, context, merge "
    "heads) by one onnxruntime MultiHeadAttention node fed by the Q, K, V projections, where the probabilities "
    "feed only the context: layers that drop tokens read them for significance and keep their core. The "
    "projections stay separate MatMuls, so static INT8 still quantizes them by role.",
    requires=has_nodes, run=_fuse_attention, ensures=none_left(_attention_cores, "written-out attention cores"),
    sites=matches(_attention_cores))

