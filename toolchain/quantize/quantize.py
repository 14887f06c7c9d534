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

from functools import partial
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx
from qtool_runtime.contract import Engine, FloatPrecision, Precision, QuantMode
from qtool_runtime.engines import available

from ..artifact import artifact, output
from ..data import squad
from ..data.calibration_windows import CALIBRATION_SETS, calibration_examples, calibration_features
from ..artifact import manifest as manifests
from .drift import drift_record, format_drift, tensor_drift
from ..core.settings import QuantizeSettings
from .recipes import QuantizationError, Recipe, calibration_reader, quantize_graph, recipes_for, select_nodes
from ..artifact.output import OutputKind
from ..artifact.interface import GraphInterface
from ..graph.runtime import Protocol, kept_agreement, onnx_session, predict_onnx, score, synthetic_feed
from qtool_runtime.timing import interleaved_ms

# Recipes are scored as deployments feed graphs: one window at a time, and length-bucketed batches of 32.
# Dynamic INT8 computes activation scales per batch, so its answers depend on batch-mates: both count.
TUNING_PROTOCOLS = (Protocol.UNPADDED, Protocol.BUCKETED)


# A static recipe within tolerance wins over a faster dynamic one unless that is faster by more than this
# factor: timing noise on a shared machine is about 5 %, and static answers do not depend on batch-mates.
STATIC_PREFERENCE = 1.05


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


def tuning_examples(questions: int, calib: str, samples: int = 10**9) -> list[squad.SquadExample]:
    """The last `questions` SQuAD train questions that are not calibration questions: held out from both
    calibration and every dev-set report. A shipped set is excluded whole; a file (e.g. SQuAD train itself) by
    the first `samples` questions, the ones calibration reads."""
    if calib in CALIBRATION_SETS:
        samples = 10**9
    calib_ids = {e.id for e in calibration_examples(calib, samples)} if calib in CALIBRATION_SETS or Path(calib).is_file() else set()
    pool = squad.load_squad("train", offset=max(0, 87_599 - questions - 400))
    held_out = [e for e in pool if e.id not in calib_ids]
    return held_out[-questions:]


def time_graphs(paths: dict[str, Path], interface: GraphInterface, seq_len: int, *, batch_size: int = 1,
                rounds: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median ms per run of each graph on the same synthetic batch, the graphs interleaved round by round."""

    feed = synthetic_feed(interface, batch_size, seq_len)
    work = {name: partial(onnx_session(p).run, None, feed) for name, p in paths.items()}
    return interleaved_ms(work, rounds=rounds, warmup=warmup)


def quantize_artifact(
    src: str | Path,
    dest: str | Path | None = None,
    settings: QuantizeSettings = QuantizeSettings(),
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Quantize one FP32 artifact folder into an INT8 artifact folder (default: fp32-X -> int8-X beside it).

    In named steps: candidates (one graph per recipe) -> score (held-out train, deployment protocols) -> time
    (interleaved, `timing_batches` at seq_len) -> choose (`choose`) -> drift (per-tensor error of the choice)
    -> write. `settings.tune` False takes the first recipe without scoring or timing it.
    """
    src, s = Path(src), settings
    recipes = recipes_for(s.recipes, s.tune)
    tolerance = s.tolerance if s.tune else None
    manifest = _quantizable(src, tolerance, recipes)
    dest = check_destination(src, dest or int8_destination(src))  # before minutes of tuning
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    seq_len = manifest.length_config.seq_len
    calib_features = calibration_features(s.calib, s.samples, tokenizer, seq_len, manifest.doc_stride,
                                          s.calib_neighbours)
    reader = calibration_reader(calib_features, 8, manifest.interface.inputs, menu_feeds(manifest))
    tuning_set = TuningSet.of(tuning_examples(s.tune_questions if s.tune else DRIFT_WINDOWS, s.calib, s.samples),
                              tokenizer, manifest)
    with tempfile.TemporaryDirectory(prefix="qtool-quant-") as work:
        candidates = recipes if tolerance is not None else recipes[:1]
        built = {r.name: build_candidate(src / manifest.graph, manifest, r, reader, Path(work)) for r in candidates}
        paths = {name: path for name, (path, _) in built.items()}
        trials = [Trial(r.name, r.describe(), float("nan"), float("nan"), float("nan"),
                        len(select_nodes(manifest, r)), size_mb=paths[r.name].stat().st_size / 1e6) for r in candidates]
        if tolerance is None:
            trials[0].within_tolerance = True
            chosen, tuning = candidates[0], None
        else:
            chosen, tuning = _score_time_choose(src, manifest, candidates, trials, paths, tuning_set, tolerance,
                                                s.timing_batches, log)
        log(f"chosen recipe: {chosen.name}")
        graph_passes = built[chosen.name][1]  # the chosen graph's rewrite count per INT8 pass
        for name, count in graph_passes.items():
            if count == 0:
                log(f"graph pass {name} rewrote nothing")
        drift = drift_record(tensor_drift(src / manifest.graph, paths[chosen.name], manifest.roles,
                                          tuning_set.single_window_feeds(DRIFT_WINDOWS, (menu_feeds(manifest) or [{}])[0])),
                             DRIFT_WINDOWS)
        for line in format_drift(drift):
            log(line)
        record = quantization_record(chosen, manifest, select_nodes(manifest, chosen), s.calib, s.samples,
                                     len(calib_features), tuning, drift, calib_neighbours=s.calib_neighbours)
        write_int8(src, manifest, dest, paths[chosen.name], quantization=record, graph_passes=graph_passes or None,
                   engine=chosen.engine, float_precision=chosen.float_precision)
    return dest


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger",
                 "QAttention", "DynamicQuantizeMatMul", "QGemm")


def _quantized_ops(graph: Path) -> list[str]:
    """The quantized op types an (FP32-labelled) graph holds, in the order of QUANTIZED_OPS: none for an FP32 graph."""
    ops = {n.op_type for n in onnx.load(str(graph), load_external_data=False).graph.node}
    return [op for op in QUANTIZED_OPS if op in ops]


def _quantizable(src: Path, tolerance: float | None, recipes: Sequence[Recipe]) -> manifests.Manifest:
    """The FP32 artifact's manifest, once the request is known to make sense (before any work)."""
    manifest = manifests.load(src)
    if manifest.precision != Precision.FP32:
        raise QuantizationError(f"{src} is {manifest.precision}, quantize needs an FP32 artifact")
    if manifest.route:
        raise QuantizationError(f"{src} is a routed graph; quantize its two parts, then route the INT8 graphs")
    quantized = _quantized_ops(src / manifest.graph)
    if quantized:
        raise QuantizationError(f"{src}: the manifest says fp32, but the graph already holds {', '.join(quantized)} "
                                "nodes (manifest altered?); quantize needs an FP32 graph")
    if tolerance is not None and tolerance < 0:
        raise QuantizationError(f"tolerance must be >= 0 F1 points, got {tolerance}")
    if not recipes:
        raise QuantizationError("no recipes to try")
    for recipe in recipes:
        select_nodes(manifest, recipe)  # refuse a recipe that names a role the graph lacks
        if tolerance is not None and recipe.engine is not Engine.ONNXRUNTIME:
            raise QuantizationError(f"recipe {recipe.name} is for {recipe.engine}, and tuning scores and times recipes on "
                                    "onnxruntime: take it with --no-tune")
        if not available(recipe.engine):
            raise QuantizationError(f"recipe {recipe.name} writes a graph for {recipe.engine}, which is not installed: "
                                    f"pip install 'qtool[{recipe.engine}]'")
    return manifest


def int8_destination(src: Path, *, plain_ort: bool = False) -> Path:
    """fp32-X -> int8-X beside it (X-int8 for a folder named otherwise); the plain onnxruntime baseline: ort-int8-X."""
    if plain_ort:
        return src.with_name("ort-int8-" + src.name.removeprefix("fp32-"))
    return src.with_name(src.name.replace("fp32-", "int8-", 1) if src.name.startswith("fp32-") else src.name + "-int8")


def check_destination(src: str | Path, dest: str | Path) -> Path:
    """Refuse, before any work, an INT8 destination that is, holds or lies inside the FP32 artifact, or that holds
    anything but an INT8 artifact (re-quantizing replaces the previous INT8 artifact); returns it."""
    return output.check_target(dest, OutputKind.INT8_ARTIFACT, inputs=(("the FP32 artifact", src),),
                               option="INT8 destination")


def _score_time_choose(src: Path, manifest: manifests.Manifest, candidates: Sequence[Recipe], trials: list[Trial],
                       paths: dict[str, Path], tuning_set: TuningSet, tolerance: float, timing_batches: tuple[int, int],
                       log: Callable[[str], None]) -> tuple[Recipe, dict]:
    """Score every candidate against the FP32 graph, time them side by side, choose; returns the tuning record too."""
    baseline = tuning_set.baseline(src / manifest.graph, log)
    latency = time_candidates(src / manifest.graph, paths, manifest, timing_batches)
    for trial in trials:
        score_trial(trial, paths[trial.recipe], tuning_set, baseline, latency, tolerance)
        log(format_trial(trial, timing_batches))
    log(f"  {'fp32':<28} b{timing_batches[0]} {latency['small']['fp32']:.1f} ms  "
        f"b{timing_batches[1]} {latency['large']['fp32']:.0f} ms")
    by_name = {r.name: r for r in candidates}
    chosen = by_name[choose(trials, by_name, tolerance).recipe]
    return chosen, tuning_record(tuning_set, baseline, tolerance, latency, timing_batches, trials)


DRIFT_WINDOWS = 16  # held-out train windows the per-tensor error report runs on


def menu_feeds(manifest: manifests.Manifest) -> list[dict[str, np.ndarray]]:
    """A run-time configuration graph's menu as keep-count feeds ([] for a graph of one configuration)."""
    seq_len = manifest.length_config.seq_len
    return [manifest.interface.keep_feed(e.feed(seq_len), seq_len) for e in manifest.menu or []]


@dataclass
class TuningSet:
    """Held-out SQuAD train questions and their windows, and the protocols a graph of this rule is fed with."""

    examples: list[squad.SquadExample]
    features: squad.Features
    protocols: tuple[str, ...]
    fp32_preds: dict = field(default_factory=dict)
    # a run-time configuration graph is scored at each menu entry: label -> keep counts (None: the one configuration)
    configs: dict[str, tuple | None] = field(default_factory=lambda: {"": None})

    @classmethod
    def of(cls, examples: list[squad.SquadExample], tokenizer, manifest: manifests.Manifest) -> "TuningSet":
        features = squad.featurize(examples, tokenizer, max_length=manifest.length_config.seq_len,
                                   doc_stride=manifest.doc_stride)
        configs = {c.label: c.keep for c in manifest.menu_configs()} if manifest.is_runtime else {"": None}
        return cls(examples, features, TUNING_PROTOCOLS, configs=configs)

    @property
    def runs(self) -> list[tuple[str, str, tuple | None]]:
        """(key, protocol, keep counts) of every scored run; the key is the protocol, '@config' for menu entries."""
        return [(p + (f"@{label}" if label else ""), p, keep) for label, keep in self.configs.items() for p in self.protocols]

    def predict(self, session) -> dict[str, object]:
        seq_len = self.features.input_ids.shape[1]
        return {key: predict_onnx(session, self.features, protocol=p, invariant=False,
                                  keep=None if keep is None else [seq_len if k is None else k for k in keep])
                for key, p, keep in self.runs}

    def baseline(self, fp32_graph: Path, log: Callable[[str], None]) -> dict[str, float]:
        """The FP32 graph's F1 under each protocol (its predictions kept for kept-token agreement)."""
        self.fp32_preds = self.predict(onnx_session(fp32_graph))
        f1 = {key: score(self.examples, self.features, preds)["f1"] for key, preds in self.fp32_preds.items()}
        log(f"FP32 on {len(self.examples)} held-out SQuAD train questions: "
            + ", ".join(f"F1 {key} {f1[key]:.2f}" for key in f1))
        return f1

    def single_window_feeds(self, count: int, keep: dict[str, np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
        """The first `count` windows, each alone at its real length (no padding, no batch-mates); `keep`: the
        keep-count feed of a run-time configuration graph."""
        lengths = self.features.attention_mask.sum(1)
        return [{k: v[row: row + 1, : lengths[row]] for k, v in self.features.model_inputs().items()} | (keep or {})
                for row in range(min(count, len(self.features)))]


def build_candidate(fp32_graph: Path, manifest: manifests.Manifest, recipe: Recipe, reader, work: Path
                    ) -> tuple[Path, dict[str, int]]:
    """Step 1: one quantized graph for `recipe`, and each INT8 graph pass's rewrite count on it."""
    path = work / f"{recipe.name}.onnx"
    return path, quantize_graph(fp32_graph, path, recipe, select_nodes(manifest, recipe), reader)


def time_candidates(fp32_graph: Path, paths: dict[str, Path], manifest: manifests.Manifest,
                    timing_batches: tuple[int, int]) -> dict[str, dict[str, float]]:
    """Step 2: median ms per run of FP32 and every candidate at a small and a large batch, interleaved."""
    small, large = timing_batches
    graphs = {"fp32": fp32_graph, **paths}
    seq_len = manifest.length_config.seq_len
    return {"small": time_graphs(graphs, manifest.interface, seq_len, batch_size=small),
            "large": time_graphs(graphs, manifest.interface, seq_len, batch_size=large, rounds=3, warmup=1)}


def score_trial(trial: Trial, graph: Path, tuning_set: TuningSet, baseline: dict[str, float],
                latency: dict[str, dict[str, float]], tolerance: float) -> None:
    """Step 3: F1 under every protocol the graph will be fed with (really run each: a recipe's batch
    invariance is measured here, not assumed), at every menu entry of a run-time graph; the worst drop counts."""
    preds = tuning_set.predict(onnx_session(graph))
    results = {key: score(tuning_set.examples, tuning_set.features, p) for key, p in preds.items()}
    trial.f1_by_protocol = {key: r["f1"] for key, r in results.items()}
    worst = max(results, key=lambda key: baseline[key] - results[key]["f1"])
    trial.f1, trial.exact_match = results[worst]["f1"], results[worst]["exact_match"]
    trial.f1_drop = baseline[worst] - results[worst]["f1"]
    trial.within_tolerance = trial.f1_drop <= tolerance
    trial.latency_ms = {k: v[trial.recipe] for k, v in latency.items()}
    # the first protocol, at the menu entry that keeps the fewest tokens (a run-time graph's hardest case)
    first = min(tuning_set.runs, key=lambda run: sum(k or 0 for k in run[2]) if run[2] else 0)[0]
    trial.kept_agreement = kept_agreement(tuning_set.fp32_preds[first], preds[first], tuning_set.features.attention_mask)


def format_trial(trial: Trial, timing_batches: tuple[int, int]) -> str:
    small, large = timing_batches
    return (f"  {trial.recipe:<28} F1 " + " / ".join(f"{v:.2f}" for v in trial.f1_by_protocol.values())
            + f" (worst drop {trial.f1_drop:+.2f})  b{small} {trial.latency_ms['small']:.1f} ms  "
            f"b{large} {trial.latency_ms['large']:.0f} ms  {trial.size_mb:.1f} MB")


def speed(trial: Trial) -> float:
    """The small and the large batch weigh alike: geometric mean of the two latencies (ms)."""
    return float(np.sqrt(trial.latency_ms["small"] * trial.latency_ms["large"]))


def choose(trials: Sequence[Trial], recipes: dict[str, Recipe], tolerance: float) -> Trial:
    """Step 4: the fastest recipe within tolerance; a static one wins unless the fastest is faster than it by
    more than STATIC_PREFERENCE (timing noise), since static answers do not depend on batch-mates."""
    eligible = [t for t in trials if t.within_tolerance]
    if not eligible:
        best = max(trials, key=lambda t: t.f1)
        raise QuantizationError(
            f"no recipe kept F1 within {tolerance} of FP32; best was {best.recipe} with a drop of {best.f1_drop:.2f}. "
            "Raise --tolerance or calibrate on more samples.")
    fastest = min(eligible, key=speed)
    static = [t for t in eligible if recipes[t.recipe].batchable and speed(t) <= STATIC_PREFERENCE * speed(fastest)]
    return min(static, key=speed) if static else fastest


def tuning_record(tuning_set: TuningSet, baseline: dict[str, float], tolerance: float,
                  latency: dict[str, dict[str, float]], timing_batches: tuple[int, int], trials: Sequence[Trial]) -> dict:
    small, large = timing_batches
    return {
        "squad_file": "train", "protocols": list(tuning_set.protocols), "questions": len(tuning_set.examples),
        "configs": [label for label in tuning_set.configs if label] or None,
        "fp32_f1": baseline, "tolerance_f1": tolerance,
        "drop": "the worse of the protocols: dynamic INT8 answers depend on batch-mates",
        "latency": {"statistic": "median, graphs interleaved", "batch_sizes": {"small": small, "large": large},
                    "seq_len": tuning_set.features.input_ids.shape[1], "fp32": {k: v["fp32"] for k, v in latency.items()}},
        "trials": [asdict(t) for t in trials],
        "rule": (f"fastest (geometric mean of small- and large-batch latency at seq_len) among recipes within tolerance; "
                 f"a static recipe wins unless that one is more than {STATIC_PREFERENCE:.2f}x faster"),
    }


def quantization_record(recipe: Recipe, manifest: manifests.Manifest, nodes: list[str], calib: str, samples: int,
                        windows: int, tuning: dict | None, drift: dict, *, calib_neighbours: int = 0) -> dict:
    """Step 5: what the manifest says was done: format, calibration, which tensors are INT8, and why."""
    static = recipe.mode == QuantMode.STATIC
    return {
        "tool": "onnx-neural-compressor (Intel Neural Compressor, ONNX flavour)",
        "mode": recipe.mode,
        "format": recipe.quant_format if static else "dynamic (MatMulInteger / DynamicQuantizeLinear)",
        "recipe": asdict(recipe),
        "description": recipe.describe(),
        "batchable": recipe.batchable,
        "calibration": {"set": calib, "questions": samples, "windows": windows, "method": recipe.calibration,
                        "seq_len": manifest.length_config.seq_len,
                        "document_windows": {"neighbours": calib_neighbours, "share": 0.5} if calib_neighbours else None,
                        } if static else None,
        "quantized": {
            "weights": f"S8 {'per-channel' if recipe.per_channel else 'per-tensor'}: " + ", ".join(
                r for r in manifest.roles if r not in recipe.keep_fp32),
            "activations": "U8 inputs of the weight MatMuls, scales fixed by calibration; outputs FP32" if static else
                           "U8 inputs of the weight MatMuls, scale computed per batch at run time; outputs FP32",
            "embeddings": "word-embedding table INT8 (Gather)" if recipe.embeddings else "FP32",
            "fp32": ["attention scores and probabilities (Q.K^T, softmax, P.V)", "LayerNorm, GELU, residual adds",
                     *(f"role {r}" for r in recipe.keep_fp32)],
            "nodes": nodes,
        },
        "tuning": tuning,
        "drift": drift,
    }


def quantize_plain_ort(src: str | Path, dest: str | Path, *, calib: str = "squad", samples: int = QuantizeSettings.samples) -> Path:
    """A comparison baseline: onnxruntime.quantization.quantize_static with its defaults (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import quantize_static
    from transformers import AutoTokenizer

    src = Path(src)
    manifest = manifests.load(src)
    dest = check_destination(src, dest)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    features = calibration_features(calib, samples, tokenizer, manifest.length_config.seq_len, manifest.doc_stride)
    with tempfile.TemporaryDirectory(prefix="qtool-ort-") as work:
        graph = Path(work) / "model.onnx"
        quantize_static(str(src / manifest.graph), str(graph), calibration_reader(features, 8, manifest.interface.inputs))
        write_int8(src, manifest, Path(dest), graph, kind="standard", quantization={
            "tool": "onnxruntime.quantization.quantize_static", "mode": QuantMode.STATIC,
            "recipe": {"name": "ort-static-defaults"}, "description": "onnxruntime quantize_static defaults (QDQ, per-tensor, MinMax)",
            "calibration": {"set": calib, "questions": samples, "features": len(features)},
        })
    return Path(dest)


def write_int8(src: Path, manifest: manifests.Manifest, dest: Path, graph: Path, *, quantization: dict,
               kind: str | None = None, graph_passes: dict[str, int] | None = None,
               engine: Engine = Engine.ONNXRUNTIME, float_precision: FloatPrecision = FloatPrecision.FP32) -> Path:
    """An INT8 artifact: the quantized graph, the FP32 artifact's other files, its manifest updated (the runtime it
    is for, and how that runtime computes its FP32 rest: recorded only where it is not FP32)."""
    opset = artifact.opset_of(onnx.load(str(graph), load_external_data=False))
    with artifact.staging(dest, OutputKind.INT8_ARTIFACT) as tmp:
        shutil.copyfile(graph, tmp / artifact.GRAPH)
        artifact.copy_files_besides_graph(src, manifest.files, manifest.graph, tmp)
        manifests.write(tmp, replace(
            manifest, graph=artifact.GRAPH, precision="int8", opset=opset, kind=kind or manifest.kind, validation=None,
            quantization=quantization, source_fp32={"folder": src.name, "sha256": manifest.files[manifest.graph]},
            files={}, created=None, versions={}, graph_passes=graph_passes, engine=str(engine),
            float_precision=None if float_precision is FloatPrecision.FP32 else str(float_precision),
            # an FP32 graph's menu figures do not describe the INT8 graph: `qtool menu` measures it again
            menu=None if manifest.menu is None else [replace(e, f1={}, ms=None) for e in manifest.menu], menu_scored=None,
        ))
    return dest
