"""NNCF's static INT8 of a qtool Drop-and-Restore FP32 graph, for OpenVINO: the comparison the shipped recipe (INC's
static INT8 on onnxruntime) owes the peer's quantizer. The NNCF step of (c)
(toolchain.evaluate.standard.nncf_static_int8), applied to qtool's FP32 export instead of the plain model's.

    python benchmarks/nncf_drop_restore.py G/ship/fp32-212-194-189-96-81-51-match G/cmp/nncf-212-194-189-96-81-51-match

Writes an artifact folder (engine openvino) that `qtool verify --engine openvino` scores and times beside the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import onnx
from transformers import AutoTokenizer

from qtool_runtime.contract import Engine, FloatPrecision, Precision
from toolchain.artifact import artifact
from toolchain.artifact import manifest as manifests
from toolchain.artifact.output import OutputKind
from toolchain.evaluate.standard import NNCF_CALIB_SAMPLES, nncf_static_int8


def quantize_with_nncf(fp32: Path, dest: Path, *, calib: str = "squad", samples: int = NNCF_CALIB_SAMPLES) -> Path:
    manifest = manifests.load(fp32)
    tokenizer = AutoTokenizer.from_pretrained(fp32, local_files_only=True)
    quantized, recipe = nncf_static_int8(fp32 / manifest.graph, tokenizer, seq_len=manifest.length_config.seq_len,
                                         doc_stride=manifest.doc_stride, calib=calib, samples=samples)
    with artifact.staging(dest, OutputKind.INT8_ARTIFACT) as tmp:
        for item in fp32.iterdir():
            if item.is_file() and item.name not in (manifest.graph, artifact.MANIFEST):
                shutil.copyfile(item, tmp / item.name)
        onnx.save(quantized, str(tmp / manifest.graph))
        # on OpenVINO at its default precision, as qtool's static-openvino recipe runs
        manifests.write(tmp, dataclasses.replace(manifest, precision=Precision.INT8, engine=str(Engine.OPENVINO),
                                                 float_precision=str(FloatPrecision.RUNTIME_DEFAULT),
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
