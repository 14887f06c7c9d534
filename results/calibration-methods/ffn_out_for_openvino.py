"""`qtool quantize --no-tune` with `static-openvino` less the FFN-output MatMuls (left FP32), for this study only:
the OpenVINO form of the onnxruntime ladder's `static-fp32-out-ffn-out`.

    python results/calibration-methods/ffn_out_for_openvino.py DIR
"""
import sys

from qtool_runtime.contract import Engine
from toolchain.quantize import recipes

name = "static-openvino-ffn-out"
recipes.RECIPES_BY_NAME[name] = recipes.Recipe(name, quant_format="QDQ", engine=Engine.OPENVINO, keep_fp32=("ffn_out",))
from toolchain.cli.commands import main  # noqa: E402

main(["quantize", sys.argv[1], "--no-tune", "--recipe", name])
