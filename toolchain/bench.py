"""The whole benchmark as one library call: build every graph from one checkpoint, then verify them side by side.

qtool's graphs: FP32 full and each configuration, INT8 of each configuration (the accuracy- and
speed-aware ladder). The competitors, from the same checkpoint: the standard recipe (optimum export,
onnxruntime fusions, dynamic INT8) and onnxruntime's plain `quantize_static` of the full graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .errors import InputError
from .export import export_configs
from .length import DEFAULT_LENGTH_RULE
from .quantize import DEFAULT_CALIB_SAMPLES, DEFAULT_TOLERANCE, DEFAULT_TUNE_QUESTIONS, LADDER, Recipe, quantize_artifact, quantize_plain_ort
from .settings import ExportSettings, VerifySettings
from .standard import build_standard
from .verify import verify_artifacts


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
    """Export, quantize, build the competitors, verify (as `verify` says); returns the verify report.

    Each reduced configuration is exported once per rule in `length_rules` (the full graph does not drop,
    so it has no rule), so the report shows what each rule does to padded and unpadded inputs side by side.
    """
    out = Path(out)
    if not length_rules:
        raise InputError("at least one length rule is needed")
    verify.check()
    reduced = [c for c in configs if c != "full"]
    folders = export_configs(model_dir, ["full", *reduced], out, settings=ExportSettings(length_rule=length_rules[0]))
    for rule in length_rules[1:]:
        folders += export_configs(model_dir, reduced, out, settings=ExportSettings(length_rule=rule))
    log(f"exported {len(folders)} graphs")
    for src in folders[1:] or folders[:1]:  # the full graph ships when no reduced configuration is asked for
        log(f"quantizing {src.name}")
        quantize_artifact(src, samples=calib_samples, tolerance=tolerance, tune_questions=tune_questions,
                          recipes=recipes, timing_batches=timing_batches, log=log)
    if plain_ort:
        quantize_plain_ort(folders[0], out / "ort-int8-full", samples=calib_samples)
    if standard:
        build_standard(model_dir, out, log=log)
    return verify_artifacts(out, verify, model_dir=model_dir, log=log)
