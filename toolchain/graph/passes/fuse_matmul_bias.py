"""fuse-matmul-bias: the bias Add after each static INT8 weight GEMM (MatMulIntegerToFloat without a bias) moves into
the GEMM's optional bias input, so the GEMM adds it in its epilogue instead of a separate pass over the activations.
Runs first on a quantized graph: fuse-qattention packs GEMMs with their biases inside."""

from __future__ import annotations

import onnx

from .framework import GraphPass
from .graph_utils import consumers, has_nodes, matches, none_left, only_user, other


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
        bias = other(add, mm.output[0])
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
    requires=has_nodes, run=_fuse_bias, ensures=none_left(_bias_adds, "bias Adds after MatMulIntegerToFloat"),
    sites=matches(_bias_adds))
