"""NNCF's static INT8 of a qtool Drop-and-Restore FP32 graph, for OpenVINO: the comparison the shipped recipe (INC's
static INT8 on onnxruntime) owes the peer's quantizer. Same NNCF call and calibration windows as (c)
(toolchain.evaluate.standard), applied to qtool's FP32 export instead of the plain model's.

    python benchmarks/nncf_drop_restore.py G/ship/fp32-212-194-189-96-81-51-match G/cmp/nncf-212-194-189-96-81-51-match

Writes an artifact folder (engine openvino) that `qtool verify --engine openvino` scores and times beside the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from pathlib import Path

import nncf
import onnx
from transformers import AutoTokenizer

from qtool_runtime.contract import Engine, Precision, QuantMode
from toolchain.artifact import artifact
from toolchain.artifact import manifest as manifests
from toolchain.artifact.output import OutputKind
from toolchain.data.calibration_windows import calibration_features
from toolchain.evaluate.standard import NNCF_CALIB_NEIGHBOURS, NNCF_CALIB_SAMPLES


def quantize_with_nncf(fp32: Path, dest: Path, *, calib: str = "squad", samples: int = NNCF_CALIB_SAMPLES) -> Path:
    manifest = manifests.load(fp32)
    tokenizer = AutoTokenizer.from_pretrained(fp32, local_files_only=True)
    seq_len = manifest.length_config.seq_len
    windows = calibration_features(calib, samples, tokenizer, seq_len, manifest.doc_stride,
                                   neighbours=NNCF_CALIB_NEIGHBOURS)
    items = [windows.model_inputs(slice(i, i + 1)) for i in range(len(windows))]
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(onnx.load(str(fp32 / manifest.graph)), nncf.Dataset(items), subset_size=len(items),
                              model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
    with artifact.staging(dest, OutputKind.INT8_ARTIFACT) as tmp:
        for item in fp32.iterdir():
            if item.is_file() and item.name not in (manifest.graph, artifact.MANIFEST):
                shutil.copyfile(item, tmp / item.name)
        onnx.save(quantized, str(tmp / manifest.graph))
        recipe = {"tool": f"nncf.quantize {nncf.__version__} (ONNX backend)", "mode": QuantMode.STATIC,
                  "recipe": {"name": "nncf transformer mixed", "model_type": "TRANSFORMER", "preset": "MIXED"},
                  "calibration": {"set": calib, "windows": len(items), "neighbours": NNCF_CALIB_NEIGHBOURS}}
        manifests.write(tmp, dataclasses.replace(manifest, precision=Precision.INT8, engine=str(Engine.OPENVINO),
                                                 quantization=recipe, validation=None, files={}, graph_passes=None,
                                                 source_fp32={"folder": fp32.name}))
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="a qtool FP32 artifact folder (qtool export)")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--samples", type=int, default=NNCF_CALIB_SAMPLES)
    args = parser.parse_args()
    print(f"wrote {quantize_with_nncf(args.fp32, args.dest, samples=args.samples)}")


if __name__ == "__main__":
    main()
