"""ONNX graph helpers the passes share (and `toolchain.quantize.drift`, `toolchain.graph.route` read graphs with): who reads and
writes each tensor, subgraphs, free names for new nodes, tensors and initializers, constants, node order, and the
checks and counts a pass states (`has_nodes`, `none_left`, `matches`)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .framework import Check, GraphPassError

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib operators (the standard recipe's graphs use them too)


def has_nodes(model: onnx.ModelProto) -> str | None:
    return None if len(model.graph.node) else "the graph has no nodes"


def none_left(find: Callable[[onnx.ModelProto], list], what: str) -> Check:
    """A fusion's promise: its pattern matches nowhere any more."""
    def check(model: onnx.ModelProto) -> str | None:
        left = find(model)
        return f"{len(left)} {what} remain" if left else None
    return check


def matches(find: Callable[[onnx.ModelProto], list]) -> Callable[[onnx.ModelProto], int]:
    """A fusion's sites: how many places its pattern matches (the same finder its promise, `none_left`, uses)."""
    def count(model: onnx.ModelProto) -> int:
        return len(find(model))
    return count


def constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant node output, else None."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def is_scalar(model: onnx.ModelProto, name: str, value: float) -> bool:
    c = constant(model, name)
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


def other(node: onnx.NodeProto, name: str) -> str:
    return node.input[1] if node.input[0] == name else node.input[0]


def import_contrib_ops(model: onnx.ModelProto) -> None:
    """Declare onnxruntime's contrib domain, once, for the fused nodes a pass wrote."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def free_name(model: onnx.ModelProto, base: str) -> str:
    """`base`, or `base_N` when a node already has that name (names stay unique)."""
    taken = {n.name for n in model.graph.node}
    n = 0
    while (f"{base}_{n}" if n else base) in taken:
        n += 1
    return f"{base}_{n}" if n else base


def free_tensor_name(model: onnx.ModelProto, base: str) -> str:
    """`base`, or `base_N` when the graph already has a tensor (or constant) by that name or by that prefix."""
    taken = ({o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
             | {i.name for i in model.graph.initializer})
    n, name = 0, base
    while any(t == name or t.startswith(f"{name}_") for t in taken):
        n += 1
        name = f"{base}_{n}"
    return name


def add_initializers(model: onnx.ModelProto, base: str, arrays: dict[str, np.ndarray]) -> list[str]:
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


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """The constants only the fused nodes read (a flat graph: one with subgraphs keeps every initializer)."""
    if any(subgraphs(n) for n in model.graph.node):
        return
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    used |= {i.name for i in model.graph.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


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


def sort_nodes(graph: onnx.GraphProto) -> None:
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
