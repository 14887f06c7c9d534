"""fuse-gelu: each exact GELU torch's exporter writes out (Div by sqrt 2, Erf, Add 1, Mul 0.5, Mul x) becomes one
onnxruntime Gelu node, so onnxruntime fuses the bias Add before it (BiasGelu) as it does for the standard recipe's
graph: the same function, five fewer kernels per layer."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .framework import GraphPass
from .graph_utils import (MS_DOMAIN, consumers, drop_unused_initializers, free_name, has_nodes, import_contrib_ops,
                          is_scalar, matches, none_left, only_user, other, producers)


def _gelu_chains(model: onnx.ModelProto) -> list[tuple[str, list[onnx.NodeProto]]]:
    """Each exact GELU the exporter wrote out, x -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(0.5) -> Mul(x) (the two
    Muls in either order), as (x, its five nodes); intermediate tensors used elsewhere disqualify a chain."""
    users = consumers(model.graph)
    producer = producers(model.graph)
    chains = []
    for erf in (n for n in model.graph.node if n.op_type == "Erf"):
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not is_scalar(model, div.input[1], float(np.sqrt(2.0))):
            continue
        x = div.input[0]
        add = only_user(users, erf.output[0], "Add")
        if add is None or not is_scalar(model, other(add, erf.output[0]), 1.0):
            continue
        first = only_user(users, add.output[0], "Mul")
        second = first and only_user(users, first.output[0], "Mul")
        if second is None or only_user(users, div.output[0], "Erf") is None:
            continue
        factors = {other(first, add.output[0]), other(second, first.output[0])}
        if x in factors and any(f != x and is_scalar(model, f, 0.5) for f in factors):
            chains.append((x, [div, erf, add, first, second]))
    return chains


def _fuse_gelu(model: onnx.ModelProto) -> None:
    graph = model.graph
    for x, nodes in _gelu_chains(model):
        at = list(graph.node).index(nodes[0])
        for node in nodes:
            graph.node.remove(node)
        module = nodes[1].name.rsplit("/", 1)[0]
        graph.node.insert(at, helper.make_node("Gelu", [x], [nodes[-1].output[0]], name=free_name(model, f"{module}/Gelu"),
                                               domain=MS_DOMAIN))
    import_contrib_ops(model)
    drop_unused_initializers(model)


FUSE_GELU = GraphPass(
    "fuse-gelu",
    "Replace each exact GELU the exporter writes out (Div, Erf, Add, Mul, Mul) by one onnxruntime Gelu node, so "
    "onnxruntime fuses the bias Add before it (BiasGelu) as it does for the standard recipe's graph. Same "
    "function (erf form), five fewer kernels per layer. A GELU written another way is left as it is.",
    requires=has_nodes, run=_fuse_gelu, ensures=none_left(_gelu_chains, "written-out GELUs"),
    sites=matches(_gelu_chains))
