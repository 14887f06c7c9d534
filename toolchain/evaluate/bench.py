"""The whole benchmark as one library call: build every graph from one checkpoint, then verify them side by side.

qtool's graphs: FP32 full and each configuration, INT8 of each configuration (the accuracy- and
speed-aware ladder). The competitors, from the same checkpoint: the standard recipe (optimum export,
onnxruntime fusions, dynamic INT8) and onnxruntime's plain `quantize_static` of the full graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..artifact import output
from ..graph.export import export_configs, planned_folders
from ..artifact.output import OutputKind, RootKind, Target
from ..quantize.quantize import int8_destination, quantize_artifact, quantize_plain_ort
from ..core.settings import BenchSettings, ExportSettings, VerifySettings
from .standard import build_standard, openvino_installed, standard_targets
from .verify import report_destination, verify_artifacts


def run_bench(
    model_dir: str | Path,
    configs: Sequence[str],
    out: str | Path,
    verify: VerifySettings = VerifySettings(),
    bench: BenchSettings = BenchSettings(),
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Export, quantize, build the peers ((b), and (c) where the openvino extra is installed), verify (as `verify`
    says); returns the verify report.
    """
    out = Path(out)
    verify.check()
    reduced = [c for c in configs if c != "full"]
    names = ["full", *reduced]
    _check_outputs(model_dir, out, names, verify, standard=bench.standard, plain_ort=bench.plain_ort)
    folders = export_configs(model_dir, names, out, settings=ExportSettings())
    log(f"exported {len(folders)} graphs")
    for src in _quantized(folders):
        log(f"quantizing {src.name}")
        quantize_artifact(src, settings=bench.quantize, log=log)
    if bench.plain_ort:
        quantize_plain_ort(folders[0], int8_destination(folders[0], plain_ort=True), samples=bench.quantize.samples)
    if bench.standard:
        build_standard(model_dir, out, openvino=openvino_installed(), calib_samples=bench.quantize.samples, log=log)
    return verify_artifacts(out, verify, model_dir=model_dir, log=log)


def _quantized(folders: list[Path]) -> list[Path]:
    """The FP32 graphs bench quantizes: the reduced ones (the full graph when no reduced configuration is asked for)."""
    return folders[1:] or folders[:1]


def _check_outputs(model_dir: str | Path, out: Path, names: list[str], verify: VerifySettings, *,
                   standard: bool, plain_ort: bool) -> None:
    """Every folder bench will write and its report, checked before the first export (`toolchain.artifact.output`)."""
    fp32 = planned_folders(model_dir, names, out, ExportSettings())
    targets = [Target(f, OutputKind.FP32_ARTIFACT) for f in fp32]
    targets += [Target(int8_destination(f), OutputKind.INT8_ARTIFACT) for f in _quantized(fp32)]
    if plain_ort:
        targets.append(Target(int8_destination(fp32[0], plain_ort=True), OutputKind.INT8_ARTIFACT))
    if standard:
        targets += standard_targets(out, openvino_installed())
    output.check_root(out, RootKind.ARTIFACTS, targets, inputs=(("--model", model_dir),))
    report_destination(out, verify.report_dir)
