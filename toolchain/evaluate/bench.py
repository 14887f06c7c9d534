"""The whole benchmark as one library call: build every graph from one checkpoint, then verify them side by side.

qtool's graphs: FP32 full and each configuration, INT8 of each configuration (the accuracy- and
speed-aware ladder). The competitors, from the same checkpoint: the standard recipe (optimum export,
onnxruntime fusions, dynamic INT8) and onnxruntime's plain `quantize_static` of the full graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..artifact import output
from ..core.errors import InputError
from ..graph.export import export_configs, planned_folders
from ..core.length import DEFAULT_LENGTH_RULE
from ..artifact.output import OutputKind, RootKind, Target
from ..quantize.recipes import LADDER, Recipe
from ..quantize.quantize import (DEFAULT_CALIB_SAMPLES, DEFAULT_TOLERANCE, DEFAULT_TUNE_QUESTIONS, int8_destination,
                                 quantize_artifact, quantize_plain_ort)
from ..graph.settings import ExportSettings, VerifySettings
from .standard import build_standard, openvino_installed, standard_targets
from .verify import report_destination, verify_artifacts


def run_bench(
    model_dir: str | Path,
    configs: Sequence[str],
    out: str | Path,
    verify: VerifySettings = VerifySettings(),
    *,
    length_rules: Sequence[str] = (DEFAULT_LENGTH_RULE,),
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    tolerance: float = DEFAULT_TOLERANCE,
    tune_questions: int = DEFAULT_TUNE_QUESTIONS,
    recipes: Sequence[Recipe] = LADDER,
    timing_batches: tuple[int, int] = (1, 32),
    standard: bool = True,
    plain_ort: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Export, quantize, build the peers ((b), and (c) where the openvino extra is installed), verify (as `verify`
    says); returns the verify report.

    Each reduced configuration is exported once per rule in `length_rules` (the full graph does not drop,
    so it has no rule), so the report shows what each rule does to padded and unpadded inputs side by side.
    """
    out = Path(out)
    if not length_rules:
        raise InputError("at least one length rule is needed")
    verify.check()
    reduced = [c for c in configs if c != "full"]
    exports = [(["full", *reduced], length_rules[0]), *((reduced, rule) for rule in length_rules[1:])]
    _check_outputs(model_dir, out, exports, verify, standard=standard, plain_ort=plain_ort)
    folders = [f for names, rule in exports
               for f in export_configs(model_dir, names, out, settings=ExportSettings(length_rule=rule))]
    log(f"exported {len(folders)} graphs")
    for src in _quantized(folders):
        log(f"quantizing {src.name}")
        quantize_artifact(src, samples=calib_samples, tolerance=tolerance, tune_questions=tune_questions,
                          recipes=recipes, timing_batches=timing_batches, log=log)
    if plain_ort:
        quantize_plain_ort(folders[0], int8_destination(folders[0], plain_ort=True), samples=calib_samples)
    if standard:
        build_standard(model_dir, out, openvino=openvino_installed(), calib_samples=calib_samples, log=log)
    return verify_artifacts(out, verify, model_dir=model_dir, log=log)


def _quantized(folders: list[Path]) -> list[Path]:
    """The FP32 graphs bench quantizes: the reduced ones (the full graph when no reduced configuration is asked for)."""
    return folders[1:] or folders[:1]


def _check_outputs(model_dir: str | Path, out: Path, exports: list[tuple[list[str], str]], verify: VerifySettings, *,
                   standard: bool, plain_ort: bool) -> None:
    """Every folder bench will write and its report, checked before the first export (`toolchain.artifact.output`)."""
    fp32 = [f for names, rule in exports for f in planned_folders(model_dir, names, out, ExportSettings(length_rule=rule))]
    targets = [Target(f, OutputKind.FP32_ARTIFACT) for f in fp32]
    targets += [Target(int8_destination(f), OutputKind.INT8_ARTIFACT) for f in _quantized(fp32)]
    if plain_ort:
        targets.append(Target(int8_destination(fp32[0], plain_ort=True), OutputKind.INT8_ARTIFACT))
    if standard:
        targets += standard_targets(out, openvino_installed())
    output.check_root(out, RootKind.ARTIFACTS, targets, inputs=(("--model", model_dir),))
    report_destination(out, verify.report_dir)
