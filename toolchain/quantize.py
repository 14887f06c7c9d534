"""INT8 post-training quantization through Intel Neural Compressor's ONNX flavour, accuracy- and speed-aware.

Candidates are weight MatMuls selected by the roles export recorded in the manifest (Q, K, V, attention
output, FFN in, FFN out, QA head), optionally the word-embedding table. Activation x activation MatMuls
(Q.K^T, P.V) stay FP32 so the attention that ranks tokens for TopK loses as little as possible.

Every recipe in the ladder is quantized, scored on a held-out slice of SQuAD *train* (never dev, never the
calibration questions) under the deployment protocol (unpadded windows), and timed side by side with the
others in one process. The fastest recipe whose F1 stays within `tolerance` of the FP32 graph wins.

Why our own loop instead of onnx_neural_compressor.quantization.tuning.autotune: autotune calls exit(0)
when no recipe meets the goal, which would end a CLI run with success and no artifact, and it orders
recipes by an assumed speed rather than a measured one. Each trial still quantizes through
neural-compressor's `quantize`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from importlib.resources import files
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from . import artifact, squad
from . import manifest as manifests
from .runtime import GraphInterface, kept_agreement, onnx_session, predict_onnx, score, synthetic_feed

CALIBRATION_SETS = {"squad": "squad-train-300.json"}
DEFAULT_TUNE_QUESTIONS = 1000
DEFAULT_CALIB_SAMPLES = 128  # calibration windows for static recipes
DEFAULT_TOLERANCE = 1.0  # largest F1 drop against the FP32 graph a recipe may cost
# Recipes are scored as deployments feed graphs: one window at a time, and length-bucketed batches of 32.
# Dynamic INT8 computes activation scales per batch, so its answers depend on batch-mates: both count.
# A `ratio` graph expects windows padded to seq_len (its manifest says so): it is scored that way.
TUNING_PROTOCOLS = {"cap": ("unpadded", "bucketed"), "ratio": ("padded",)}


class QuantizationError(RuntimeError):
    """Quantization could not produce a usable graph."""


@dataclass(frozen=True)
class Recipe:
    name: str
    mode: Literal["static", "dynamic"] = "static"
    keep_fp32: tuple[str, ...] = ()  # roles left in FP32
    per_channel: bool = True
    smooth_quant: float | None = None  # SmoothQuant alpha (static only), None = off
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"  # static activation ranges
    embeddings: bool = True  # INT8 word-embedding table (size: 30,522 x d floats otherwise dominate)

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        if self.mode == "static":
            parts = [f"static INT8 weight MatMuls (S8 {weights} weights, U8 activations, {self.calibration} calibration, QOperator)"]
        else:
            parts = [f"dynamic INT8 weight MatMuls (S8 {weights} weights, U8 activations quantized per batch at run time)"]
        if self.smooth_quant is not None:
            parts.append(f"SmoothQuant alpha {self.smooth_quant}")
        if self.keep_fp32:
            parts.append("FP32: " + ", ".join(self.keep_fp32))
        parts.append("INT8 word embeddings" if self.embeddings else "FP32 embeddings")
        return "; ".join(parts)


RECIPES: tuple[Recipe, ...] = (
    Recipe("static-all"),
    Recipe("static-all-sq", smooth_quant=0.5),
    Recipe("static-all-pct", calibration="percentile"),
    Recipe("static-fp32-ffn-out", keep_fp32=("ffn_out",)),
    Recipe("dynamic-all", mode="dynamic", per_channel=False),
    Recipe("dynamic-all-pc", mode="dynamic"),
    Recipe("dynamic-fp32-ffn-out", mode="dynamic", per_channel=False, keep_fp32=("ffn_out",)),
    Recipe("static-fp32-ffn-out-qk-head", keep_fp32=("ffn_out", "q", "k", "head")),
)
RECIPES_BY_NAME = {r.name: r for r in RECIPES}
# What `--no-tune` takes when no recipe is named: on the reference model (README, Quantization) it was the
# fastest recipe within tolerance at both timing batch sizes, under both rules.
DEFAULT_RECIPE = "dynamic-all-pc"


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


def calibration_features(calib: str, samples: int, tokenizer, seq_len: int, doc_stride: int) -> squad.Features:
    """Windows of the first `samples` calibration questions, at most `samples` of them."""
    f = squad.featurize(calibration_examples(calib, samples), tokenizer, max_length=seq_len, doc_stride=doc_stride)
    head = slice(0, samples)
    return squad.Features(f.input_ids[head], f.attention_mask[head], f.token_type_ids[head], f.example_index[head], f.offsets[head])


def calibration_reader(features: squad.Features, batch_size: int = 8, inputs: Sequence[str] | None = None):
    """The one calibration reader: SQuAD windows in batches, rewindable, for INC and onnxruntime alike."""
    from onnx_neural_compressor.data_reader import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            wanted = set(inputs) if inputs else None
            self.batches = [
                {k: v for k, v in features.model_inputs(slice(lo, lo + batch_size)).items() if wanted is None or k in wanted}
                for lo in range(0, len(features), batch_size)
            ]
            self.position = 0

        def get_next(self):
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return self.batches[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

        def __len__(self) -> int:
            return len(self.batches)

    return _Reader()


def select_nodes(manifest: manifests.Manifest, recipe: Recipe) -> list[str]:
    """Weight MatMuls the recipe quantizes, from the roles export recorded; unknown roles are an error."""
    if not manifest.roles:
        raise QuantizationError("the manifest records no node roles; re-export the graph with this qtool")
    unknown = [r for r in recipe.keep_fp32 if r not in manifest.roles]
    if unknown:
        raise QuantizationError(f"recipe {recipe.name} names role(s) {unknown} the graph does not have ({list(manifest.roles)})")
    empty = [r for r, names in manifest.roles.items() if not names]
    if empty:
        raise QuantizationError(f"role(s) {empty} match no node in the graph")
    return [n for role, names in manifest.roles.items() if role not in recipe.keep_fp32 for n in names]


def embedding_gathers(path: str | Path) -> list[str]:
    """The word-embedding Gather (the only big table), by the module name export gave it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Gather" and "word_embeddings" in n.name]


def quantize_graph(fp32: str | Path, out: str | Path, recipe: Recipe, nodes: list[str], reader) -> None:
    """One INC quantization of `fp32` into `out` (a single self-contained file)."""
    import onnx
    from onnx_neural_compressor.quantization import CalibrationMethod, QuantFormat, config, quantize

    op_types = ["MatMul"]
    if recipe.embeddings:
        gathers = embedding_gathers(fp32)
        if not gathers:
            raise QuantizationError(f"recipe {recipe.name} quantizes embeddings, but {fp32} has no word-embedding Gather")
        nodes = [*nodes, *gathers]
        op_types.append("Gather")
    if recipe.mode == "dynamic":
        quant_config = config.DynamicQuantConfig(
            op_types_to_quantize=op_types, nodes_to_quantize=nodes, per_channel=recipe.per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    else:
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if recipe.smooth_quant is not None:
            extra |= {"SmoothQuant": True, "SmoothQuantAlpha": recipe.smooth_quant, "SmoothQuantCalibIter": len(reader)}
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[recipe.calibration]
        quant_config = config.StaticQuantConfig(
            calibration_data_reader=reader, calibrate_method=method, quant_format=QuantFormat.QOperator,
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes, per_channel=recipe.per_channel, calibration_sampling_size=len(reader),
            extra_options=extra,
        )
        reader.rewind()
    logging.getLogger("onnx_neural_compressor").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="qtool-inc-") as scratch:
        raw = Path(scratch) / "model.onnx"
        quantize(str(fp32), str(raw), quant_config)
        if not raw.is_file():
            raise QuantizationError(f"neural-compressor wrote no graph for recipe {recipe.name}")
        # INC may store weights as external data beside the graph; ship one self-contained file instead.
        onnx.save(onnx.load(str(raw), load_external_data=True), str(out))


@dataclass
class Trial:
    recipe: str
    description: str
    f1: float
    exact_match: float
    f1_drop: float
    quantized_nodes: int
    f1_by_protocol: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    size_mb: float = 0.0
    kept_agreement: list[float] = field(default_factory=list)
    within_tolerance: bool = False


def tuning_examples(questions: int, calib: str) -> list[squad.SquadExample]:
    """The last `questions` SQuAD train questions that are not calibration questions: held out from both
    calibration and every dev-set report."""
    calib_ids = {e.id for e in calibration_examples(calib, 10**9)} if calib in CALIBRATION_SETS or Path(calib).is_file() else set()
    pool = squad.load_squad("train", offset=max(0, 87_599 - questions - 400))
    held_out = [e for e in pool if e.id not in calib_ids]
    return held_out[-questions:]


def time_graphs(paths: dict[str, Path], interface: GraphInterface, seq_len: int, *, batch_size: int = 1,
                rounds: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median ms per run of each graph on the same synthetic batch, the graphs interleaved round by round."""
    import time

    sessions = {name: onnx_session(p) for name, p in paths.items()}
    feed = synthetic_feed(interface, batch_size, seq_len)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(warmup + rounds):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feed)
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: float(np.median(t)) for name, t in times.items()}


def quantize_artifact(
    src: str | Path,
    dest: str | Path | None = None,
    *,
    calib: str = "squad",
    samples: int = DEFAULT_CALIB_SAMPLES,
    tolerance: float | None = DEFAULT_TOLERANCE,
    tune_questions: int = DEFAULT_TUNE_QUESTIONS,
    recipes: Sequence[Recipe] = RECIPES,
    timing_batches: tuple[int, int] = (1, 32),
    log: Callable[[str], None] = print,
) -> Path:
    """Quantize one FP32 artifact folder into an INT8 artifact folder (default: fp32-X -> int8-X beside it).

    Recipes are timed at `timing_batches` (a small and a large batch of seq_len real tokens); the fastest
    by the geometric mean of the two wins among those within tolerance. `tolerance=None` takes the first
    recipe without scoring or timing it.
    """
    src = Path(src)
    manifest = manifests.load(src)
    if manifest.precision != "fp32":
        raise QuantizationError(f"{src} is {manifest.precision}, quantize needs an FP32 artifact")
    if tolerance is not None and tolerance < 0:
        raise QuantizationError(f"tolerance must be >= 0 F1 points, got {tolerance}")
    if not recipes:
        raise QuantizationError("no recipes to try")
    dest = Path(dest) if dest else src.with_name(src.name.replace("fp32-", "int8-", 1) if src.name.startswith("fp32-") else src.name + "-int8")
    for recipe in recipes:
        select_nodes(manifest, recipe)  # refuse a recipe that names a role the graph lacks, before any work
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    seq_len = manifest.length_config.seq_len
    calib_features = calibration_features(calib, samples, tokenizer, seq_len, manifest.doc_stride)
    reader = calibration_reader(calib_features, 8, manifest.interface.inputs)
    fp32_graph = src / manifest.graph
    protocols = TUNING_PROTOCOLS[manifest.length_config.rule]

    trials: list[Trial] = []
    by_name = {r.name: r for r in recipes}
    with tempfile.TemporaryDirectory(prefix="qtool-quant-") as work:
        paths: dict[str, Path] = {}
        for recipe in recipes if tolerance is not None else recipes[:1]:
            paths[recipe.name] = Path(work) / f"{recipe.name}.onnx"
            nodes = select_nodes(manifest, recipe)
            quantize_graph(fp32_graph, paths[recipe.name], recipe, nodes, reader)
            trials.append(Trial(recipe.name, recipe.describe(), float("nan"), float("nan"), float("nan"), len(nodes),
                                size_mb=paths[recipe.name].stat().st_size / 1e6))
        tuning = None
        if tolerance is None:
            chosen = recipes[0]
            trials[0].within_tolerance = True
        else:
            examples = tuning_examples(tune_questions, calib)
            features = squad.featurize(examples, tokenizer, max_length=seq_len, doc_stride=manifest.doc_stride)
            fp32_session = onnx_session(fp32_graph)
            fp32_preds = {p: predict_onnx(fp32_session, features, protocol=p, invariant=manifest.invariant)
                          for p in protocols}
            baseline = {p: score(examples, features, fp32_preds[p])["f1"] for p in protocols}
            log(f"FP32 on {len(examples)} held-out SQuAD train questions: "
                + ", ".join(f"F1 {p} {baseline[p]:.2f}" for p in protocols))
            small, large = timing_batches
            latency = {
                "small": time_graphs({"fp32": fp32_graph, **paths}, manifest.interface, seq_len, batch_size=small),
                "large": time_graphs({"fp32": fp32_graph, **paths}, manifest.interface, seq_len, batch_size=large,
                                     rounds=3, warmup=1),
            }
            for trial in trials:
                session = onnx_session(paths[trial.recipe])
                invariant = manifest.invariant and by_name[trial.recipe].mode == "static"
                preds = {p: predict_onnx(session, features, protocol=p, invariant=invariant) for p in protocols}
                results = {p: score(examples, features, preds[p]) for p in protocols}
                trial.f1_by_protocol = {p: r["f1"] for p, r in results.items()}
                worst = max(protocols, key=lambda p: baseline[p] - results[p]["f1"])
                trial.f1, trial.exact_match = results[worst]["f1"], results[worst]["exact_match"]
                trial.f1_drop = baseline[worst] - results[worst]["f1"]
                trial.within_tolerance = trial.f1_drop <= tolerance
                trial.latency_ms = {k: v[trial.recipe] for k, v in latency.items()}
                trial.kept_agreement = kept_agreement(fp32_preds[protocols[0]], preds[protocols[0]], features.attention_mask)
                log(f"  {trial.recipe:<28} F1 " + " / ".join(f"{trial.f1_by_protocol[p]:.2f}" for p in protocols)
                    + f" (worst drop {trial.f1_drop:+.2f})  b{small} {trial.latency_ms['small']:.1f} ms  "
                    f"b{large} {trial.latency_ms['large']:.0f} ms  {trial.size_mb:.1f} MB")
            log(f"  {'fp32':<28} b{small} {latency['small']['fp32']:.1f} ms  b{large} {latency['large']['fp32']:.0f} ms")
            eligible = [t for t in trials if t.within_tolerance]
            if not eligible:
                best = max(trials, key=lambda t: t.f1)
                raise QuantizationError(
                    f"no recipe kept F1 within {tolerance} of FP32 (F1 {min(baseline.values()):.2f}); best was {best.recipe} "
                    f"with a drop of {best.f1_drop:.2f}. Raise --tolerance or calibrate on more samples."
                )
            # fastest by measured latency: the small and the large batch weigh alike (geometric mean of the two)
            fastest = min(eligible, key=lambda t: float(np.sqrt(t.latency_ms["small"] * t.latency_ms["large"])))
            chosen = by_name[fastest.recipe]
            tuning = {
                "squad_file": "train", "protocols": list(protocols), "questions": len(examples),
                "fp32_f1": baseline, "tolerance_f1": tolerance,
                "drop": "the worse of the protocols: dynamic INT8 answers depend on batch-mates",
                "latency": {"statistic": "median, graphs interleaved", "batch_sizes": {"small": small, "large": large},
                            "seq_len": seq_len, "fp32": {k: v["fp32"] for k, v in latency.items()}},
                "trials": [asdict(t) for t in trials],
                "rule": "fastest (geometric mean of small- and large-batch latency at seq_len) among recipes within tolerance",
            }
        log(f"chosen recipe: {chosen.name}")
        write_int8(src, manifest, dest, paths[chosen.name], quantization={
            "tool": "onnx-neural-compressor (Intel Neural Compressor, ONNX flavour)",
            "mode": chosen.mode,
            "format": "QOperator" if chosen.mode == "static" else "dynamic (MatMulInteger / DynamicQuantizeLinear)",
            "recipe": asdict(chosen),
            "description": chosen.describe(),
            "calibration": None if chosen.mode == "dynamic" else {
                "set": calib, "questions": samples, "features": len(calib_features), "seq_len": seq_len},
            "tuning": tuning,
        })
    return dest


def quantize_plain_ort(src: str | Path, dest: str | Path, *, calib: str = "squad", samples: int = DEFAULT_CALIB_SAMPLES) -> Path:
    """Baseline (c): onnxruntime.quantization.quantize_static with its defaults (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import quantize_static
    from transformers import AutoTokenizer

    src = Path(src)
    manifest = manifests.load(src)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    features = calibration_features(calib, samples, tokenizer, manifest.length_config.seq_len, manifest.doc_stride)
    with tempfile.TemporaryDirectory(prefix="qtool-ort-") as work:
        graph = Path(work) / "model.onnx"
        quantize_static(str(src / manifest.graph), str(graph), calibration_reader(features, 8, manifest.interface.inputs))
        write_int8(src, manifest, Path(dest), graph, kind="standard", quantization={
            "tool": "onnxruntime.quantization.quantize_static", "mode": "static",
            "recipe": {"name": "ort-static-defaults"}, "description": "onnxruntime quantize_static defaults (QDQ, per-tensor, MinMax)",
            "calibration": {"set": calib, "questions": samples, "features": len(features)},
        })
    return Path(dest)


def write_int8(src: Path, manifest: manifests.Manifest, dest: Path, graph: Path, *, quantization: dict,
               kind: str | None = None) -> Path:
    """An INT8 artifact: the quantized graph, the FP32 artifact's other files, its manifest updated."""
    import onnx

    opset = next(o.version for o in onnx.load(str(graph), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    with artifact.staging(dest) as tmp:
        shutil.copyfile(graph, tmp / artifact.GRAPH)
        for name in manifest.files:
            if name != manifest.graph:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, tmp / name)
        manifests.write(tmp, replace(
            manifest, graph=artifact.GRAPH, precision="int8", opset=opset, kind=kind or manifest.kind, validation=None,
            quantization=quantization, source_fp32={"folder": src.name, "sha256": manifest.files[manifest.graph]},
            files={}, created=None, versions={},
        ))
    return dest
