"""Which activation scales neural-compressor's calibration methods change on a qtool FP32 graph.

Quantizes the graph's weight MatMuls (and the embedding table) as `static-fp32-out` does, once per method, with
neural-compressor called directly, and prints each activation scale that differs from MinMax's.

    python results/calibration-methods/calibration_scales.py /tmp/qtool-openvino-runtime/ship/fp32-315-240-200-140-100-40-answer
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx_neural_compressor.quantization import CalibrationMethod, QuantFormat, config, quantize
from transformers import AutoTokenizer

from toolchain.artifact import manifest as manifests
from toolchain.data.calibration_windows import calibration_features
from toolchain.quantize.recipes import RECIPES_BY_NAME, calibration_reader, embedding_gathers, select_nodes


def activation_scales(path: Path) -> dict[str, float]:
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    manifest = manifests.load(args.fp32)
    graph = args.fp32 / manifest.graph
    tokenizer = AutoTokenizer.from_pretrained(args.fp32, local_files_only=True)
    features = calibration_features("squad", args.samples, tokenizer, manifest.length_config.seq_len, manifest.doc_stride)
    nodes = select_nodes(manifest, RECIPES_BY_NAME["static-fp32-out"]) + embedding_gathers(graph)
    scales = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile, CalibrationMethod.Entropy):
            inputs = [i.name for i in onnx.load(str(graph), load_external_data=False).graph.input]
            reader = calibration_reader(features, inputs=inputs)
            out = Path(scratch) / f"{method.name}.onnx"
            quantize(str(graph), str(out), config.StaticQuantConfig(
                calibration_data_reader=reader, calibrate_method=method, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Gather"], nodes_to_quantize=nodes, per_channel=True,
                calibration_sampling_size=len(reader), reduce_range=False,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                               "OpTypesToExcludeOutputQuantization": ["MatMul"]}))
            scales[method.name] = activation_scales(out)
    base = scales["MinMax"]
    print(f"{graph}: {len(base)} activation tensors quantized; calibration windows {len(features)}")
    for name, found in scales.items():
        if name == "MinMax":
            continue
        moved = {t: (base[t], s) for t, s in found.items() if t in base and not np.isclose(s, base[t])}
        print(f"{name}: {len(moved)} of {len(found)} scales differ from MinMax")
        for tensor, (a, b) in moved.items():
            print(f"  {tensor}: {a:.6g} -> {b:.6g}")


if __name__ == "__main__":
    main()
