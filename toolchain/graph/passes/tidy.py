"""The tidy passes every exported graph gets first: nodes named after the module they came from (quantization recipes
select ops by role through these names), then the exporter's metadata dropped (it holds local stack traces and
paths). The naming reads that metadata, so it runs first (TIDY's order)."""

from __future__ import annotations

import ast

import onnx

from .framework import GraphPass
from .graph_utils import has_nodes

NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # where torch's exporter records each node's module path


def _module_of(node: onnx.NodeProto) -> str:
    """The innermost module torch's exporter recorded for the node ('graph' when it recorded none)."""
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get(NAME_SCOPES, "[]"))
    except (ValueError, SyntaxError):
        scopes = []
    modules = [s for s in scopes[:-1] if s] if isinstance(scopes, list) else []
    return modules[-1] if modules else "graph"


def _module_names(model: onnx.ModelProto) -> list[str]:
    """Each node's name '<module>/<op>', '_1', '_2' for repeats, in node order."""
    seen: dict[str, int] = {}
    names = []
    for node in model.graph.node:
        base = f"{_module_of(node)}/{node.op_type}"
        seen[base] = seen.get(base, -1) + 1
        names.append(base if seen[base] == 0 else f"{base}_{seen[base]}")
    return names


def _name_by_module(model: onnx.ModelProto) -> None:
    for node, name in zip(model.graph.node, _module_names(model)):
        node.name = name


def _nodes_to_rename(model: onnx.ModelProto) -> int:
    return sum(node.name != name for node, name in zip(model.graph.node, _module_names(model)))


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


def _metadata_entries(model: onnx.ModelProto) -> int:
    return sum(len(n.metadata_props) for n in model.graph.node) + len(model.metadata_props)


def _metadata_to_drop(model: onnx.ModelProto) -> int:
    """The metadata entries to drop, and one more when the graph is not yet signed as qtool's."""
    return _metadata_entries(model) + (model.producer_name != "qtool")


def _no_metadata(model: onnx.ModelProto) -> str | None:
    left = _metadata_entries(model)
    if left:
        return f"{left} metadata entries remain"
    return None if model.producer_name == "qtool" else f"producer is {model.producer_name!r}"


NAME_NODES_BY_MODULE = GraphPass(
    "name-nodes-by-module",
    "Name every node '<module>/<op>' ('...layer.3.output.dense/MatMul', '_1', '_2' for repeats): quantization "
    "recipes select ops by role through these names. Must run before the metadata it reads is dropped.",
    requires=has_nodes, run=_name_by_module, ensures=_names_unique_and_readable, sites=_nodes_to_rename)
DROP_EXPORT_METADATA = GraphPass(
    "drop-export-metadata",
    "Remove the exporter's per-node and model metadata (it holds local stack traces and paths) and sign the "
    "graph as qtool's.",
    requires=has_nodes, run=_drop_metadata, ensures=_no_metadata, sites=_metadata_to_drop)
TIDY = (NAME_NODES_BY_MODULE, DROP_EXPORT_METADATA)
