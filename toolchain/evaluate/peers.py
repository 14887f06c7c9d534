"""The peers' artifact names: what `qtool standard` writes and what verify measures every graph against.

(b) the standard recipe (optimum export, onnxruntime fusions, dynamic INT8) on onnxruntime; (c) the same export
quantized by NNCF, on OpenVINO Runtime. Speed claims are against the faster of the two, F1 against the better.
"""

from __future__ import annotations

STANDARD_FP32 = "std-fp32-optimum"  # the plain model, optimum's ONNX export
STANDARD_FUSED = "std-fp32-o2"  # (a) onnxruntime's O2 fusions of it
STANDARD_INT8 = "std-int8-o2-dynamic"  # (b)
OPENVINO_INT8 = "std-int8-openvino-nncf"  # (c)
PEERS = {"std": STANDARD_INT8, "openvino": OPENVINO_INT8}  # label in the report's speedup_vs_<label> -> artifact
