"""`qtool quantize --no-tune --recipe R` with neural-compressor's SmoothQuant at alpha A, for this study only.

Two neural-compressor 1.0 defects are worked around here, not in qtool: SmoothQuant refuses a graph whose MatMuls
share a weight (an `answer` graph runs the QA head once per dropping layer), so each MatMul gets its own copy first;
and `extra_options={"SmoothQuantAlpha": A}` is not passed on (every alpha gave the same graph), so the config is
neural-compressor's SmoothQuantConfig, which is.

    python results/calibration-methods/smoothquant_inc.py DIR static-openvino 0.95 shared
"""
import collections
import os
import sys
import tempfile

import onnx
import onnx_neural_compressor.quantization as inc
import onnx_neural_compressor.quantization.config as inc_config

alpha, shared = float(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "shared"


class SmoothQuantStatic(inc_config.SmoothQuantConfig):
    """What recipes.quantize_graph builds as StaticQuantConfig, with SmoothQuant at `alpha` in front."""

    def __init__(self, *args, **kwargs):
        kwargs["extra_options"] = {**kwargs.get("extra_options", {}), "SmoothQuant": True}
        super().__init__(*args, alpha=alpha, scales_per_op=not shared, **kwargs)


inc_config.StaticQuantConfig = SmoothQuantStatic
real_quantize = inc.quantize


def untied_quantize(src, dst, cfg):
    model = onnx.load(src)
    weights = {i.name: i for i in model.graph.initializer}
    users = collections.Counter(n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    for node in model.graph.node:
        if node.op_type == "MatMul" and users.get(node.input[1], 0) > 1:
            copy = onnx.TensorProto()
            copy.CopyFrom(weights[node.input[1]])
            copy.name = f"{node.input[1]}_{node.name.replace('/', '_')}"
            model.graph.initializer.append(copy)
            node.input[1] = copy.name
    untied = os.path.join(tempfile.mkdtemp(), "untied.onnx")
    onnx.save(model, untied)
    return real_quantize(untied, dst, cfg)


inc.quantize = untied_quantize
from toolchain.cli.commands import main  # noqa: E402  (after the patches, which it reads at call time)

main(["quantize", sys.argv[1], "--no-tune", "--recipe", sys.argv[2]])
