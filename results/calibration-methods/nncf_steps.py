"""NNCF's static INT8 of a qtool FP32 graph (benchmarks/nncf_drop_restore.py) with one of its steps off:
`no-bc` without bias correction, `no-sq` without SmoothQuant.

    python results/calibration-methods/nncf_steps.py FP32_DIR DEST no-sq
"""
import sys
from pathlib import Path

import nncf
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import nncf_drop_restore  # noqa: E402

STEPS_OFF = {"no-bc": AdvancedQuantizationParameters(disable_bias_correction=True),
             "no-sq": AdvancedQuantizationParameters(
                 smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))}
real_quantize = nncf.quantize


def quantize_without(model, dataset, **kwargs):
    return real_quantize(model, dataset, advanced_parameters=STEPS_OFF[sys.argv[3]], **kwargs)


nncf.quantize = quantize_without
print(nncf_drop_restore.quantize_with_nncf(Path(sys.argv[1]), Path(sys.argv[2])))
