"""Static INT8 post-training quantization through Intel Neural Compressor's ONNX flavour, accuracy-aware.

Only weight MatMuls (the Linear layers) are candidates: activation x activation MatMuls (Q.K^T, P.V)
stay FP32 so the attention probabilities that rank tokens for TopK lose as little as possible. Recipes
are tried from the most quantized (fastest) to the most conservative; the first whose F1 on a held-out
SQuAD slice stays within `tolerance` of the FP32 graph wins. BERT's FFN output MatMuls carry activation
outliers, so the recipes either smooth them (SmoothQuant) or keep them FP32.

Why our own loop instead of onnx_neural_compressor.quantization.tuning.autotune: autotune calls exit(0)
when no recipe meets the goal (and when a config quantizes nothing), which would end a CLI run with
success and no artifact. Each trial still quantizes through neural-compressor's `quantize`.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import artifact, squad
from .verify import kept_agreement, onnx_session, predict_onnx, score

CALIBRATION_SETS = {"squad": "squad-train-300.json"}

# Roles of weight MatMuls, by the module names export gives nodes ('...layer.3.output.dense/MatMul').
ROLES = {
    "ffn_out": r"layer\.\d+\.output\.dense/",
    "ffn_in": r"layer\.\d+\.intermediate\.dense/",
    "qk": r"attention\.self\.(query|key)/",
    "head": r"qa_outputs/",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    keep_fp32: tuple[str, ...] = ()  # roles left in FP32
    smooth_quant: float | None = None  # SmoothQuant alpha, None = off
    per_channel: bool = True

    def describe(self) -> str:
        parts = ["INT8 weight MatMuls (per-channel S8 weights, U8 activations, static MinMax)"]
        if self.smooth_quant is not None:
            parts.append(f"SmoothQuant alpha {self.smooth_quant}")
        if self.keep_fp32:
            parts.append("FP32: " + ", ".join(self.keep_fp32))
        return "; ".join(parts)


# Most quantized first: the first recipe within tolerance is also the fastest that is.
RECIPES: tuple[Recipe, ...] = (
    Recipe("all-linear"),
    Recipe("all-linear-sq", smooth_quant=0.5),
    Recipe("fp32-ffn-out", keep_fp32=("ffn_out",)),
    Recipe("fp32-ffn-out-qk", keep_fp32=("ffn_out", "qk")),
    Recipe("fp32-ffn-out-qk-head", keep_fp32=("ffn_out", "qk", "head")),
    Recipe("fp32-ffn-qk-head", keep_fp32=("ffn_out", "ffn_in", "qk", "head")),
)
RECIPES_BY_NAME = {r.name: r for r in RECIPES}


class QuantizationError(RuntimeError):
    """Quantization could not produce a usable graph."""


def calibration_examples(calib: str, samples: int) -> list[squad.SquadExample]:
    """'squad' = the calibration set shipped in the package (offline); else a path to SQuAD v1.1 JSON."""
    if calib in CALIBRATION_SETS:
        path = Path(str(files("toolchain.calibration").joinpath(CALIBRATION_SETS[calib])))
    else:
        path = Path(calib)
        if not path.is_file():
            raise FileNotFoundError(f"calibration set {calib!r}: not a shipped set {list(CALIBRATION_SETS)} nor a file")
    examples = squad.load_squad(path, limit=samples)
    if not examples:
        raise QuantizationError(f"calibration set {calib!r} holds no questions")
    return examples


def calibration_reader(features: squad.Features, batch_size: int = 8):
    """Feeds SQuAD feature batches to neural-compressor's calibration (rewindable)."""
    from onnx_neural_compressor.data_reader import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [
                features.model_inputs(slice(lo, lo + batch_size)) for lo in range(0, len(features), batch_size)
            ]
            self.position = 0

        def get_next(self):
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return self.batches[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

    return _Reader()


def weight_matmuls(path: str | Path) -> list[str]:
    """Names of MatMul nodes whose second input is a constant weight."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def select_nodes(names: Sequence[str], recipe: Recipe) -> list[str]:
    patterns = [re.compile(ROLES[r]) for r in recipe.keep_fp32]
    return [n for n in names if not any(p.search(n) for p in patterns)]


def quantize_graph(fp32: str | Path, out: str | Path, recipe: Recipe, reader, num_batches: int) -> list[str]:
    """One INC static quantization of `fp32` into `out` under `recipe`; returns the quantized node names."""
    from onnx_neural_compressor.quantization import QuantFormat, config, quantize

    nodes = select_nodes(weight_matmuls(fp32), recipe)
    if not nodes:
        raise QuantizationError(f"recipe {recipe.name} leaves no MatMul to quantize in {fp32}")
    extra = {}
    if recipe.smooth_quant is not None:
        extra = {"SmoothQuant": True, "SmoothQuantAlpha": recipe.smooth_quant, "SmoothQuantCalibIter": num_batches}
    quant_config = config.StaticQuantConfig(
        calibration_data_reader=reader,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=["MatMul"],
        nodes_to_quantize=nodes,
        per_channel=recipe.per_channel,
        calibration_sampling_size=num_batches,
        extra_options=extra,
    )
    reader.rewind()
    logging.getLogger("onnx_neural_compressor").setLevel(logging.WARNING)
    import onnx

    with tempfile.TemporaryDirectory(prefix="qtool-inc-") as scratch:
        raw = Path(scratch) / "model.onnx"
        quantize(str(fp32), str(raw), quant_config)
        if not raw.is_file():
            raise QuantizationError(f"neural-compressor wrote no graph for recipe {recipe.name}")
        # INC stores weights as external data beside the graph; ship one self-contained file instead.
        onnx.save(onnx.load(str(raw), load_external_data=True), str(out))
    return nodes


@dataclass
class Trial:
    recipe: str
    description: str
    f1: float
    exact_match: float
    f1_drop: float
    quantized_nodes: int
    kept_agreement: list[float] = field(default_factory=list)


def quantize_artifact(
    src: str | Path,
    dest: str | Path | None = None,
    calib: str = "squad",
    samples: int = 128,
    tolerance: float | None = 1.0,
    eval_file: str = "dev",
    eval_questions: int = 200,
    recipes: Sequence[Recipe] = RECIPES,
    log: Callable[[str], None] = print,
) -> Path:
    """Quantize one FP32 artifact folder into an INT8 artifact folder (default: fp32-X -> int8-X beside it).

    Tuning scores each recipe on the last `eval_questions` questions of `eval_file`, so a report on the
    first N dev questions is not the slice the recipe was picked on. `tolerance=None` takes the first
    recipe without evaluating.
    """
    src = Path(src)
    manifest = artifact.check_artifact(src)
    if manifest.get("precision") != "fp32":
        raise QuantizationError(f"{src} is {manifest.get('precision')}, quantize needs an FP32 artifact")
    dest = Path(dest) if dest else src.with_name(src.name.replace("fp32-", "int8-", 1) if src.name.startswith("fp32-") else src.name + "-int8")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    seq_len = manifest["length_config"]["seq_len"]
    calib_features = calibration_features(calib, samples, tokenizer, seq_len)
    batch = 8
    num_batches = (len(calib_features) + batch - 1) // batch
    reader = calibration_reader(calib_features, batch)

    fp32_graph = src / manifest["graph"]
    trials: list[Trial] = []
    chosen: Recipe | None = None
    eval_examples = eval_features = baseline = fp32_preds = None
    if tolerance is not None:
        eval_examples = _tail(squad.load_squad(eval_file), eval_questions)
        eval_features = squad.featurize(eval_examples, tokenizer, max_length=seq_len)
        fp32_preds = predict_onnx(onnx_session(fp32_graph), eval_features)
        baseline = score(eval_examples, eval_features, fp32_preds)
        log(f"FP32 on {len(eval_examples)} held-out questions: F1 {baseline['f1']:.2f}  EM {baseline['exact_match']:.2f}")

    with tempfile.TemporaryDirectory(prefix="qtool-quant-") as work:
        best_path = None
        for recipe in recipes:
            trial_path = Path(work) / f"{recipe.name}.onnx"
            nodes = quantize_graph(fp32_graph, trial_path, recipe, reader, num_batches)
            if tolerance is None:
                chosen, best_path = recipe, trial_path
                trials.append(Trial(recipe.name, recipe.describe(), float("nan"), float("nan"), float("nan"), len(nodes)))
                break
            preds = predict_onnx(onnx_session(trial_path), eval_features)
            result = score(eval_examples, eval_features, preds)
            drop = baseline["f1"] - result["f1"]
            trial = Trial(
                recipe.name, recipe.describe(), result["f1"], result["exact_match"], drop, len(nodes),
                kept_agreement(fp32_preds, preds, eval_features.attention_mask),
            )
            trials.append(trial)
            agree = ", ".join(f"{a:.3f}" for a in trial.kept_agreement)
            log(f"  {recipe.name:<22} F1 {result['f1']:6.2f} (drop {drop:+.2f})  nodes {len(nodes)}  kept agreement [{agree}]")
            if drop <= tolerance:
                chosen, best_path = recipe, trial_path
                break
        if chosen is None:
            best = max(trials, key=lambda t: t.f1)
            raise QuantizationError(
                f"no recipe kept F1 within {tolerance} of FP32 ({baseline['f1']:.2f}); best was {best.recipe} "
                f"with a drop of {best.f1_drop:.2f}. Raise --tolerance or calibrate on more samples."
            )
        log(f"chosen recipe: {chosen.name}")
        _write_int8(src, manifest, dest, best_path, source_fp32={"folder": src.name, "sha256": manifest["files"][manifest["graph"]]},
                    quantization={
                        "tool": "onnx-neural-compressor (Intel Neural Compressor, ONNX flavour)",
                        "format": "QOperator",
                        "recipe": asdict(chosen),
                        "description": chosen.describe(),
                        "calibration": {"set": calib, "questions": samples, "features": len(calib_features), "seq_len": seq_len},
                        "tuning": None if tolerance is None else {
                            "eval_file": str(eval_file),
                            "questions": len(eval_examples),
                            "fp32_f1": baseline["f1"],
                            "tolerance_f1": tolerance,
                            "trials": [asdict(t) for t in trials],
                        },
                    })
    return dest


def quantize_plain_ort(src: str | Path, dest: str | Path, calib: str = "squad", samples: int = 128) -> Path:
    """Baseline: onnxruntime.quantization.quantize_static with its defaults (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from transformers import AutoTokenizer

    src = Path(src)
    manifest = artifact.check_artifact(src)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    features = calibration_features(calib, samples, tokenizer, manifest["length_config"]["seq_len"])

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([features.model_inputs(slice(i, i + 8)) for i in range(0, len(features), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="qtool-ort-") as work:
        graph = Path(work) / "model.onnx"
        quantize_static(str(src / manifest["graph"]), str(graph), _Reader())
        _write_int8(src, manifest, Path(dest), graph, quantization={
            "tool": "onnxruntime.quantization.quantize_static", "recipe": "defaults (QDQ, per-tensor, MinMax)",
            "calibration": {"set": calib, "questions": samples, "features": len(features)},
        })
    return Path(dest)


def _write_int8(src: Path, manifest: dict, dest: Path, graph: Path, **fields) -> None:
    """An INT8 artifact: the quantized graph, the FP32 artifact's other files, its manifest updated."""
    with artifact.staging(dest) as tmp:
        shutil.copyfile(graph, tmp / artifact.GRAPH)
        for name in manifest["files"]:
            if name != manifest["graph"]:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, tmp / name)
        inherited = {k: v for k, v in manifest.items() if k not in ("files", "created", "versions", "format")}
        artifact.write_manifest(tmp, {**inherited, "precision": "int8", "validation": None, "metrics": {}, **fields})


def calibration_features(calib: str, samples: int, tokenizer, seq_len: int) -> squad.Features:
    """Windows of the first `samples` calibration questions, at most `samples` of them."""
    features = squad.featurize(calibration_examples(calib, samples), tokenizer, max_length=seq_len)
    head = slice(0, samples)
    return squad.Features(
        features.input_ids[head], features.attention_mask[head], features.token_type_ids[head],
        features.example_index[head], features.offsets[head],
    )


def _tail(examples: list, n: int) -> list:
    return examples[-n:] if n < len(examples) else examples
