"""Graph rewrites as passes that state what they require and what they ensure (onnx-ir's PassBase shape).

A pass is a small object: `requires` and `ensures` are checks that return None when they hold or one line
saying what does not; `run_passes` checks each pass's requirement before it runs and its promise after, so a
rewrite that silently did nothing, or did something else, stops the export with the pass's name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from qtool_runtime.contract import ATTENTION_OPSET, onnxruntime_problem
from qtool_runtime.errors import QtoolError

from .artifact import opset_of

Check = Callable[[onnx.ModelProto], "str | None"]
NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # where torch's exporter records each node's module path


class GraphPassError(QtoolError, RuntimeError):
    """A graph pass whose requirement or promise does not hold: a bug or an exporter we do not know."""


@dataclass(frozen=True)
class GraphPass:
    name: str
    doc: str
    requires: Check
    run: Callable[[onnx.ModelProto], None]
    ensures: Check


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass]) -> onnx.ModelProto:
    """Run `passes` in order on `model` (in place), checking each one's requirement before and promise after."""
    for graph_pass in passes:
        problem = graph_pass.requires(model)
        if problem is not None:
            raise GraphPassError(f"graph pass {graph_pass.name} requires what the graph lacks: {problem}")
        graph_pass.run(model)
        problem = graph_pass.ensures(model)
        if problem is not None:
            raise GraphPassError(f"graph pass {graph_pass.name} did not ensure its promise: {problem}")
    return model


def _has_nodes(model: onnx.ModelProto) -> str | None:
    return None if len(model.graph.node) else "the graph has no nodes"


def _module_of(node: onnx.NodeProto) -> str:
    """The innermost module torch's exporter recorded for the node ('graph' when it recorded none)."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get(NAME_SCOPES, "[]"))
    except (ValueError, SyntaxError):
        scopes = []
    modules = [s for s in scopes[:-1] if s] if isinstance(scopes, list) else []
    return modules[-1] if modules else "graph"


def _name_by_module(model: onnx.ModelProto) -> None:
    seen: dict[str, int] = {}
    for node in model.graph.node:
        base = f"{_module_of(node)}/{node.op_type}"
        seen[base] = seen.get(base, -1) + 1
        node.name = base if seen[base] == 0 else f"{base}_{seen[base]}"


def _names_unique_and_readable(model: onnx.ModelProto) -> str | None:
    names = [n.name for n in model.graph.node]
    if len(set(names)) != len(names):
        return "node names repeat"
    unreadable = [n.name for n in model.graph.node if not n.name.endswith(n.op_type) and f"/{n.op_type}_" not in n.name]
    return f"nodes not named <module>/<op>: {unreadable[:3]}" if unreadable else None


def _drop_metadata(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        del node.metadata_props[:]
    del model.metadata_props[:]
    model.producer_name = "qtool"


def _no_metadata(model: onnx.ModelProto) -> str | None:
    left = sum(len(n.metadata_props) for n in model.graph.node) + len(model.metadata_props)
    if left:
        return f"{left} metadata entries remain"
    return None if model.producer_name == "qtool" else f"producer is {model.producer_name!r}"


NAME_NODES_BY_MODULE = GraphPass(
    "name-nodes-by-module",
    "Name every node '<module>/<op>' ('...layer.3.output.dense/MatMul', '_1', '_2' for repeats): quantization "
    "recipes select ops by role through these names. Must run before the metadata it reads is dropped.",
    requires=_has_nodes, run=_name_by_module, ensures=_names_unique_and_readable)
DROP_EXPORT_METADATA = GraphPass(
    "drop-export-metadata",
    "Remove the exporter's per-node and model metadata (it holds local stack traces and paths) and sign the "
    "graph as qtool's.",
    requires=_has_nodes, run=_drop_metadata, ensures=_no_metadata)
TIDY = (NAME_NODES_BY_MODULE, DROP_EXPORT_METADATA)

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators (the standard recipe's graphs use them too)


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _is_scalar(model: onnx.ModelProto, name: str, value: float) -> bool:
    c = _constant(model, name)
    return c is not None and c.size == 1 and abs(float(c.reshape(())) - value) < 1e-4 * max(1.0, abs(value))


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto | None]]:
    """The nodes reading each tensor; a graph output counts as a reader (None) that no rewrite may remove."""
    users: dict[str, list[onnx.NodeProto | None]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for out in graph.output:
        users.setdefault(out.name, []).append(None)
    return users


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node writing each tensor (graph inputs and initializers have none)."""
    return {o: n for n in graph.node for o in n.output}


def only_user(users: dict, name: str, op_type: str) -> onnx.NodeProto | None:
    """The one node of `op_type` that reads `name`, when nothing else does."""
    found = users.get(name, [])
    return found[0] if len(found) == 1 and found[0] is not None and found[0].op_type == op_type else None


def _other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def _gelu_chains(model: onnx.ModelProto) -> list[tuple[str, list[onnx.NodeProto]]]:
    """Each exact GELU the exporter wrote out, x -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(0.5) -> Mul(x) (the two
    Muls in either order), as (x, its five nodes); intermediate tensors used elsewhere disqualify a chain."""
    users = consumers(model.graph)
    producer = producers(model.graph)
    chains = []
    for erf in (n for n in model.graph.node if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is_scalar(model, div.input[1], float(np.sqrt(2.0))):
            continue
        x = div.input[0]
        add = only_user(users, erf.output[0], "Add")
        if add is None or not _is_scalar(model, _other(add, erf.output[0]), 1.0):
            continue
        first = only_user(users, add.output[0], "Mul")
        second = first and only_user(users, first.output[0], "Mul")
        if second is None or only_user(users, div.output[0], "Erf") is None:
            continue
        factors = {_other(first, add.output[0]), _other(second, first.output[0])}
        if x in factors and any(f != x and _is_scalar(model, f, 0.5) for f in factors):
            chains.append((x, [div, erf, add, first, second]))
    return chains


def _fuse_gelu(model: onnx.ModelProto) -> None:
    graph = model.graph
    for x, nodes in _gelu_chains(model):
        at = list(graph.node).index(nodes[0])
        for node in nodes:
            graph.node.remove(node)
        module = nodes[1].name.rsplit("/", 1)[0]
        graph.node.insert(at, helper.make_node("Gelu", [x], [nodes[-1].output[0]], name=_free_name(model, f"{module}/Gelu"),
                                               domain=MS_DOMAIN))
    _import_contrib_ops(model)
    _drop_unused_initializers(model)


def _import_contrib_ops(model: onnx.ModelProto) -> None:
    """Declare onnxruntime's contrib domain, once, for the fused nodes a pass wrote."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _free_name(model: onnx.ModelProto, base: str) -> str:
    """`base`, or `base_N` when a node already has that name (names stay unique)."""
    taken = {n.name for n in model.graph.node}
    n = 0
    while (f"{base}_{n}" if n else base) in taken:
        n += 1
    return f"{base}_{n}" if n else base


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """The constants only the fused nodes read (a flat graph: one with subgraphs keeps every initializer)."""
    if any(subgraphs(n) for n in model.graph.node):
        return
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    used |= {i.name for i in model.graph.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _none_left(find: Callable[[onnx.ModelProto], list], what: str) -> Check:
    """A fusion's promise: its pattern matches nowhere any more."""
    def check(model: onnx.ModelProto) -> str | None:
        left = find(model)
        return f"{len(left)} {what} remain" if left else None
    return check


FUSE_GELU = GraphPass(
    "fuse-gelu",
    "Replace each exact GELU the exporter writes out (Div, Erf, Add, Mul, Mul) by one onnxruntime Gelu node, so "
    "onnxruntime fuses the bias Add before it (BiasGelu) as it does for the standard recipe's graph. Same "
    "function (erf form), five fewer kernels per layer. A GELU written another way is left as it is.",
    requires=_has_nodes, run=_fuse_gelu, ensures=_none_left(_gelu_chains, "written-out GELUs"))


def _bias_adds(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, str]]:
    """(MatMulIntegerToFloat without a bias, the Add of a 1-D initializer bias that alone consumes it, the bias).

    Weight and bias are initializers (a Constant node's output might be produced after the MatMul); their shapes
    are read from the initializers' dims, without unpacking the data."""
    users = consumers(model.graph)
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    found = []
    for mm in (n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) < 7):
        add = only_user(users, mm.output[0], "Add")
        if add is None:
            continue
        bias = _other(add, mm.output[0])
        weight, value = shapes.get(mm.input[1]), shapes.get(bias)
        if weight and value is not None and len(value) == 1 and value[0] == weight[-1]:
            found.append((mm, add, bias))
    return found


def _fuse_bias(model: onnx.ModelProto) -> None:
    for mm, add, bias in _bias_adds(model):
        inputs = list(mm.input) + [""] * (6 - len(mm.input)) + [bias]
        del mm.input[:]
        mm.input.extend(inputs)
        mm.output[0] = add.output[0]
        model.graph.node.remove(add)


FUSE_MATMUL_BIAS = GraphPass(
    "fuse-matmul-bias",
    "Move the bias Add after each MatMulIntegerToFloat (a static INT8 weight MatMul) into its optional bias input: "
    "the GEMM adds it in its epilogue instead of a separate pass over the activations.",
    requires=_has_nodes, run=_fuse_bias, ensures=_none_left(_bias_adds, "bias Adds after MatMulIntegerToFloat"))



@dataclass(frozen=True)
class _AttentionCore:
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
    shape = _constant(model, reshape.input[1])
    if shape is not None and shape.size == 4:
        return int(shape[2])
    concat = producer.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    part = _constant(model, concat.input[2])
    return int(part.reshape(-1)[0]) if part is not None and part.size == 1 else None


def _key_mask(model: onnx.ModelProto, producer: dict, bias: str) -> tuple[str, float] | None:
    """([B, T] float mask of 0/1, filter value) when `bias` is (1 - mask)[:, None, None, :] * filter_value."""
    mul = producer.get(bias)
    if mul is None or mul.op_type != "Mul":
        return None
    for name, other in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        value, unsqueeze = _constant(model, other), producer.get(name)
        if value is None or value.size != 1 or float(value.reshape(())) > -1e3:
            continue
        if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
            continue
        axes = _constant(model, unsqueeze.input[1])
        sub = producer.get(unsqueeze.input[0])
        if axes is not None and sorted(axes.reshape(-1).tolist()) == [1, 2] and sub is not None and (
                sub.op_type == "Sub" and _is_scalar(model, sub.input[0], 1.0)):
            return sub.input[1], float(value.reshape(()))
    return None


def _core_at(model: onnx.ModelProto, users: dict, producer: dict, softmax: onnx.NodeProto,
             context: onnx.NodeProto) -> _AttentionCore | None:
    """The written-out core around `softmax` and its `context` MatMul, when every tensor of the chain but the
    probabilities has one reader (the Softmax is not among the core's nodes: its readers differ by caller)."""
    add = producer.get(softmax.input[0])
    if context.input[0] != softmax.output[0] or add is None or add.op_type != "Add":
        return None
    div = next((producer[i] for i in add.input if i in producer and producer[i].op_type == "Div"), None)
    scores = div and producer.get(div.input[0])
    divisor = div and _constant(model, div.input[1])
    if scores is None or scores.op_type != "MatMul" or divisor is None or divisor.size != 1:
        return None
    q_t, k_t = _transposed(producer, scores.input[0], [0, 2, 1, 3]), _transposed(producer, scores.input[1], [0, 2, 3, 1])
    v_t = _transposed(producer, context.input[1], [0, 2, 1, 3])
    out_t = only_user(users, context.output[0], "Transpose")
    out = out_t and only_user(users, out_t.output[0], "Reshape")
    splits = [t and producer.get(t.input[0]) for t in (q_t, k_t, v_t)]
    mask = _key_mask(model, producer, _other(add, div.output[0]))
    if out is None or mask is None or any(r is None or r.op_type != "Reshape" for r in splits):
        return None
    chain = (*splits, q_t, k_t, v_t, scores, div, add, context, out_t)
    if any(len(users.get(o, [])) != 1 for n in chain for o in n.output) or not _is_transpose(out_t, [0, 2, 1, 3]):
        return None
    heads = _heads(model, producer, splits[0])
    if heads is None:
        return None
    return _AttentionCore((*chain, out), splits[0].input[0], splits[1].input[0], splits[2].input[0],
                          heads, 1.0 / float(divisor.reshape(())), *mask)


def _attention_cores(model: onnx.ModelProto) -> list[_AttentionCore]:
    """Each attention core whose probabilities feed only the context MatMul (a layer that drops tokens reads them
    for significance, so its core is `_ranking_cores`'); every intermediate tensor has one reader."""
    users = consumers(model.graph)
    producer = producers(model.graph)
    cores = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        context = only_user(users, softmax.output[0], "MatMul")
        core = context and _core_at(model, users, producer, softmax, context)
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
            name=_free_name(model, f"{module}/MultiHeadAttention"), domain=MS_DOMAIN, num_heads=core.heads,
            scale=core.scale, mask_filter_value=core.filter_value)]
        if core.key_mask not in key_masks:
            key_masks[core.key_mask] = f"{core.key_mask}_int32"
            fused.insert(0, helper.make_node("Cast", [core.key_mask], [key_masks[core.key_mask]],
                                             name=_free_name(model, "key_mask/Cast"), to=onnx.TensorProto.INT32))
        fused[-1].input[4] = key_masks[core.key_mask]
        at = list(graph.node).index(out)
        for node in core.nodes:
            graph.node.remove(node)
        at -= len(core.nodes) - 1
        for node in reversed(fused):
            graph.node.insert(at, node)
    _import_contrib_ops(model)
    _drop_unused_initializers(model)


FUSE_ATTENTION = GraphPass(
    "fuse-attention",
    "Replace each written-out attention core (split heads, q k^T, scale, mask bias, Softmax, context, merge "
    "heads) by one onnxruntime MultiHeadAttention node fed by the Q, K, V projections, where the probabilities "
    "feed only the context: layers that drop tokens read them for significance and keep their core. The "
    "projections stay separate MatMuls, so static INT8 still quantizes them by role.",
    requires=_has_nodes, run=_fuse_attention, ensures=_none_left(_attention_cores, "written-out attention cores"))


@dataclass(frozen=True)
class _RankingCore:
    """A layer's attention core whose probabilities also feed the ranking (significance)."""

    core: _AttentionCore
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
        core = _core_at(model, users, producer, softmax, context)
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


def _free_tensor_name(model: onnx.ModelProto, base: str) -> str:
    """`base`, or `base_N` when the graph already has a tensor (or constant) by that name or by that prefix."""
    taken = ({o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
             | {i.name for i in model.graph.initializer})
    n, name = 0, base
    while any(t == name or t.startswith(f"{name}_") for t in taken):
        n += 1
        name = f"{base}_{n}"
    return name


def _key_lengths(model: onnx.ModelProto, key_mask: str, last_axis: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that count each row's real keys (the [B, T] 0/1 mask summed) as int64 `nonpad_kv_seqlen`."""
    count, lengths = _free_tensor_name(model, f"{key_mask}_count"), _free_tensor_name(model, f"{key_mask}_lengths")
    return [helper.make_node("ReduceSum", [key_mask, last_axis], [count], keepdims=0, name=_free_name(model, "key_lengths/ReduceSum")),
            helper.make_node("Cast", [count], [lengths], name=_free_name(model, "key_lengths/Cast"), to=onnx.TensorProto.INT64)], lengths


def _right_padded(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], str]:
    """Nodes that decide whether every row of the input `attention_mask` is real tokens then padding (what every
    tokenizer qtool supports writes) with at least one real token (a row of padding only attends uniformly in the
    written-out core, to nothing in the fused one): a bool scalar. Then a ranking layer's keys hold their real tokens first in
    every layer: the first layer's in input order; a later layer's in a TopK's order, where significance ranks padding
    below every real token (`toolchain.model`; its question and [CLS] ranks are by position, real under right
    padding), so `nonpad_kv_seqlen` says exactly what the key mask says."""
    at = _free_tensor_name(model, "attention_mask_right_padded")
    zero, one, axis0, axis1, zero_f = _add_initializers(model, at, {
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
        node.name = _free_name(model, f"key_layout/{node.output[0]}")
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
    name = _free_name(model, f"{core.nodes[-1].name.rsplit('/', 1)[0]}/If")
    return helper.make_node(
        "If", [right_padded], [context, probs], name=name,
        then_branch=branch([_fused_core(ranking, lengths, *fused, name=f"{name}/Attention")], fused, "right_padded"),
        else_branch=branch(chain, list(written.values()), "any_padding"))


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes (an If's two branches, a Loop's body)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """The names a graph defines itself (inputs, initializers, node outputs); a subgraph reads any other from outside."""
    return {i.name for i in graph.input} | {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads: its inputs and what its subgraphs (an If's branches) read from outside themselves."""
    names = {i for i in node.input if i}
    for sub in subgraphs(node):
        own = defined_names(sub)
        names |= {x for n in sub.node for x in _reads(n) if x not in own}
    return names


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order the nodes so each comes after what it reads, keeping the given order wherever it already holds."""
    written = {o for n in graph.node for o in n.output}
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(x in ready or x not in written for x in _reads(node)):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise GraphPassError(f"the graph has a cycle through {waiting[0].name or waiting[0].op_type}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def _fuse_ranking_attention(model: onnx.ModelProto) -> None:
    """Each ranking core becomes If(the input is right-padded): one ONNX Attention that writes the context and the
    probabilities the significance reads, the key padding as per-row lengths instead of an additive bias; else the
    written-out core as it was, exact for any mask. Stale shapes of rewritten tensors are dropped (onnxruntime
    infers them again)."""
    graph = model.graph
    cores = _ranking_cores(model)
    if not cores:
        return
    axis = _add_initializers(model, "ranking_attention", {"last_axis": np.array([-1], dtype=np.int64)})[0]
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
    _sort_nodes(graph)  # the If went where the Softmax was; a V projection written after it moves ahead
    rewritten = {r.softmax.output[0] for r in cores} | {o for r in cores for n in r.core.nodes for o in n.output}
    for info in [v for v in graph.value_info if v.name in rewritten]:
        graph.value_info.remove(info)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = ATTENTION_OPSET
    _drop_unused_initializers(model)


def _requires_attention_opset(model: onnx.ModelProto) -> str | None:
    if not _ranking_cores(model):
        return _has_nodes(model)
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
    ensures=_none_left(_ranking_cores, "written-out ranking attention cores"))


def _static_gemm(init: dict, node: onnx.NodeProto | None) -> bool:
    """A static INT8 weight GEMM with its bias inside: MatMulIntegerToFloat whose weight, scales, zero points and
    bias are all initializers (a dynamic GEMM's activation scale is computed at run time)."""
    return (node is not None and node.op_type == "MatMulIntegerToFloat" and len(node.input) == 7
            and all(node.input[i] in init for i in range(1, 7)))


def _sibling_key(node: onnx.NodeProto) -> tuple[str, str, str]:
    """What sibling GEMMs share: the quantized activation, its scale and its zero point."""
    return node.input[0], node.input[2], node.input[4]


def _layer_module(gemm: onnx.NodeProto) -> str:
    """'...layer.0.attention.self' for the GEMM '...layer.0.attention.self.query/MatMul_quant': the module the
    projections belong to, which names what replaces them."""
    return gemm.name.split("/", 1)[0].rsplit(".", 1)[0]


def _packed_weights(init: dict, gemms: Sequence[onnx.NodeProto]) -> tuple[np.ndarray, ...]:
    """Weights, per-column scales, per-column zero points and biases of `gemms`, side by side (column blocks in
    order): one GEMM over the concatenation computes each block exactly as its own GEMM did."""
    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name])

    columns = [value(g.input[1]).shape[1] for g in gemms]
    weight = np.concatenate([value(g.input[1]) for g in gemms], axis=1)
    scale = np.concatenate([np.broadcast_to(value(g.input[3]), (c,)) for g, c in zip(gemms, columns)]).astype(np.float32)
    zero = np.concatenate([np.broadcast_to(value(g.input[5]), (c,)) for g, c in zip(gemms, columns)])
    bias = np.concatenate([value(g.input[6]) for g in gemms]).astype(np.float32)
    return weight, scale, zero, bias


def _add_initializers(model: onnx.ModelProto, base: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """New initializers named `base_<key>` (`base_N_<key>` when `base` is taken), in the order of `arrays`."""
    taken = {i.name for i in model.graph.initializer}
    n = 0
    while any(f"{base}{f'_{n}' if n else ''}_{suffix}" in taken for suffix in arrays):
        n += 1
    base = f"{base}_{n}" if n else base
    names = []
    for suffix, array in arrays.items():
        names.append(f"{base}_{suffix}")
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), names[-1]))
    return names


def _qattention_sites(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """(MultiHeadAttention, its Q, K, V GEMMs) where the three are static INT8 GEMMs of one quantized input read by
    nothing else, and the attention takes a key mask and no bias: what one QAttention node computes."""
    init = {i.name: i for i in model.graph.initializer}
    producer, users = producers(model.graph), consumers(model.graph)
    sites = []
    for mha in (n for n in model.graph.node if n.op_type == "MultiHeadAttention"):
        if len(mha.input) != 5 or mha.input[3] or not mha.input[4]:
            continue
        gemms = [producer.get(name) for name in mha.input[:3]]
        if (len(mha.output) == 1 and all(_static_gemm(init, g) for g in gemms) and len({_sibling_key(g) for g in gemms}) == 1
                and len({tuple(init[g.input[1]].dims) for g in gemms}) == 1  # QAttention packs three equal widths
                and all(users.get(g.output[0]) == [mha] for g in gemms)):
            sites.append((mha, gemms))
    return sites


def _fuse_qattention(model: onnx.ModelProto) -> None:
    """Each site: one initializer set of packed weights, one QAttention where the MultiHeadAttention was."""
    init = {i.name: i for i in model.graph.initializer}
    graph = model.graph
    for mha, gemms in _qattention_sites(model):
        weight, scale, zero, bias = _packed_weights(init, gemms)
        module = _layer_module(gemms[0])
        w, s, z, b = _add_initializers(model, f"{module}/qkv".replace("/", "_"),
                                       {"weight": weight, "weight_scale": scale, "weight_zero_point": zero, "bias": bias})
        attributes = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
        q = gemms[0]
        fused = helper.make_node(
            "QAttention", [q.input[0], w, b, q.input[2], s, mha.input[4], q.input[4], z], [mha.output[0]],
            name=_free_name(model, f"{module}/QAttention"), domain=MS_DOMAIN, num_heads=attributes["num_heads"],
            **{k: attributes[k] for k in ("scale", "mask_filter_value", "unidirectional") if k in attributes})
        graph.node.insert(list(graph.node).index(mha), fused)
        for node in [*gemms, mha]:
            graph.node.remove(node)
    _drop_unused_initializers(model)


FUSE_QATTENTION = GraphPass(
    "fuse-qattention",
    "Replace a MultiHeadAttention fed by three static INT8 GEMMs of one quantized input (Q, K, V) by one onnxruntime "
    "QAttention node: one packed Q|K|V GEMM with the same integer weights, per-column scales and biases, and "
    "attention in its kernel, as the standard recipe's graph runs. The same values; the full static INT8 graph about "
    "9 % faster on a 176-token window.",
    requires=_has_nodes, run=_fuse_qattention, ensures=_none_left(_qattention_sites, "MultiHeadAttentions on static Q, K, V GEMMs"))


EXPORT_PASSES = (*TIDY, FUSE_GELU, FUSE_ATTENTION)  # every exported FP32 graph, before validation against PyTorch
# every quantized graph, before it is scored and timed (the bias first: QAttention packs GEMMs with their biases).
# Packing a reduced layer's Q, K, V GEMMs into one (and a Split) was tried and measured slower at batch 32 (1.61x
# against 1.68x the standard recipe on 384-token windows; the Split copies the packed output) and no faster at batch 1.
# `fuse-ranking-attention` last: it rewrites the attention cores `fuse-qattention` leaves (the ranking layers').
INT8_PASSES = (FUSE_MATMUL_BIAS, FUSE_QATTENTION, FUSE_RANKING_ATTENTION)
