"""Graph rewrites as passes that state what they require and what they ensure (onnx-ir's PassBase shape).

A pass is a small object: `requires` and `ensures` are checks that return None when they hold or one line
saying what does not; `run_passes` checks each pass's requirement before it runs and its promise after, so a
rewrite that silently did nothing, or did something else, stops the export with the pass's name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Sequence

import onnx
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
