"""Graph rewrites as passes that state what they require and what they ensure (onnx-ir's PassBase shape).

A pass is a small object: `requires` and `ensures` are checks that return None when they hold or one line
saying what does not; `run_passes` checks each pass's requirement before it runs and its promise after, so a
rewrite that silently did nothing, or did something else, stops the export with the pass's name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from qtool_runtime.errors import QtoolError

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
    producer = {o: n for n in model.graph.node for o in n.output}
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
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _drop_unused_initializers(model)


def _free_name(model: onnx.ModelProto, base: str) -> str:
    """`base`, or `base_N` when a node already has that name (names stay unique)."""
    taken = {n.name for n in model.graph.node}
    n = 0
    while (f"{base}_{n}" if n else base) in taken:
        n += 1
    return f"{base}_{n}" if n else base


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """The constants only the fused nodes read (a flat graph: one with subgraphs keeps every initializer)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
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
    """(MatMulIntegerToFloat without a bias, the Add of a 1-D constant bias that alone consumes it, the bias)."""
    users = consumers(model.graph)
    initializers = {i.name for i in model.graph.initializer}
    found = []
    for mm in (n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat" and len(n.input) < 7):
        add = only_user(users, mm.output[0], "Add")
        if add is None:
            continue
        bias = _other(add, mm.output[0])
        if bias not in initializers:  # a Constant node's output might be produced after the MatMul
            continue
        weight, value = _constant(model, mm.input[1]), _constant(model, bias)
        if weight is not None and value is not None and value.ndim == 1 and value.shape[0] == weight.shape[-1]:
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



EXPORT_PASSES = (*TIDY, FUSE_GELU)  # every exported FP32 graph, before validation against PyTorch
INT8_PASSES = (FUSE_MATMUL_BIAS,)  # every quantized graph, before it is scored and timed
