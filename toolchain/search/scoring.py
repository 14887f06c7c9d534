"""Scoring a candidate: the search objective over held-out train workloads, F1 per workload and third."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import squad
from ..data.overlap import f1_by_third, overlap_thirds
from ..model.families import dims_of
from ..core.length import LengthConfig
from ..core.settings import SearchSettings
from ..data.splits import search_examples, trained_questions
from .shared_study import worker_name
from .space import config_from_ratios, macs_ratio_at_lengths, workload_neighbours
from ..artifact import manifest as manifests


def make_objective(model_dir: str, settings: SearchSettings, *, log: Callable[[str], None] = print):
    """The search objective over a model loaded once per process: F1 up (the mean over the workloads:
    paragraphs, and documents when `neighbours` > 0); cost down over every window of every workload
    (predicted latency at real lengths if a latency model is given, else MACs at real lengths).
    `settings` arrive resolved (search_configs): min_ratio and variant are set."""
    from ..evaluate.latency import LatencyModel

    from ..model.drop_and_restore import load_qa_model

    s = settings
    model, tokenizer = load_qa_model(model_dir)
    dims = dims_of(model)
    workloads = scoring_workloads(tokenizer, s, questions=s.questions, offset=s.offset,
                                  exclude=trained_questions(model_dir))
    lengths = {name: f.attention_mask.sum(1) for name, (_, f) in workloads.items()}
    every_window = np.concatenate(list(lengths.values()))
    timing = LatencyModel.load(s.latency_model) if s.latency_model else None

    def cost_of(config: LengthConfig, at: np.ndarray) -> float:
        return timing.cost(config, at) if timing else macs_ratio_at_lengths(config, at, dims.hidden, dims.ffn)

    def objective(trial) -> tuple[float, float]:
        trial.set_user_attr("worker", worker_name())  # which process (host:pid) ran it: visible from any machine
        ratios = [trial.suggest_float(f"r{i}", s.min_ratio, 1.0) for i in range(dims.layers)]
        config = config_from_ratios(ratios, s.seq_len, s.variant)
        if s.route:
            config = timing.routed(config)
        results = score_config(model, workloads, config)
        scores = summary(results)
        cost = cost_of(config, every_window)
        trial.set_user_attr("config", "full" if config.is_full else str(config))
        if config.full_up_to:
            trial.set_user_attr("full_up_to", config.full_up_to)
        trial.set_user_attr("exact_match", scores["exact_match"])
        trial.set_user_attr("f1_by_workload", scores["f1_by_workload"])
        trial.set_user_attr("f1_by_third", scores["f1_by_third"])
        trial.set_user_attr("cost_by_workload", {name: cost_of(config, at) for name, at in lengths.items()})
        trial.set_user_attr("macs_unpadded", macs_ratio_at_lengths(config, every_window, dims.hidden, dims.ffn))
        if timing is not None:
            trial.set_user_attr("latency", cost)
        log(f"  {config.label:<28} cost {cost:.3f}  F1 " + " / ".join(f"{r['f1']:6.2f}" for r in results.values())
            + f"  (mean {scores['f1']:.2f})")
        return scores["f1"], cost

    return objective


def scoring_workloads(tokenizer, settings: SearchSettings, *, questions: int, offset: int,
                      exclude: frozenset[str] = frozenset()) -> dict[str, tuple[list[squad.SquadExample], squad.Features]]:
    """Search questions as paragraphs and, with `neighbours` > 0, as documents, featurized at seq_len."""
    stride = squad.default_doc_stride(settings.seq_len)
    workloads = {}
    for n in workload_neighbours(settings):
        examples = search_examples(questions, offset, n, exclude)
        workloads[squad.workload_name(n)] = (examples, squad.featurize(examples, tokenizer, max_length=settings.seq_len,
                                                                       doc_stride=stride))
    return workloads


def summary(results: dict[str, dict[str, float]]) -> dict:
    """A search row's scores from score_config's results: mean F1 and EM over the workloads, and F1 by workload."""
    return {"f1": float(np.mean([r["f1"] for r in results.values()])),
            "exact_match": float(np.mean([r["exact_match"] for r in results.values()])),
            "f1_by_workload": {name: r["f1"] for name, r in results.items()},
            "f1_by_third": {f"{name}/{third}": f1 for name, r in results.items()
                            for third, f1 in r.get("f1_by_overlap", {}).items()}}


def score_config(model, workloads: dict, config: LengthConfig) -> dict[str, dict]:
    """F1/EM of one configuration (PyTorch FP32, every window unpadded) on each workload, and each question's F1
    (`f1_by_question`, 0 to 1, in the workload's order) for paired comparisons."""
    from ..graph.runtime import Protocol, predict_torch

    return {name: _scores(examples, features, predict_torch(model, features, config, protocol=Protocol.UNPADDED))
            for name, (examples, features) in workloads.items()}


def reference_label(folder: str | Path) -> str:
    """A reference graph's name in the search's rows: a run-time configuration graph is scored at its full entry."""

    folder = Path(folder)
    return f"{folder.name}@full" if manifests.load(folder).is_runtime else folder.name


def score_graph(folder: str | Path, workloads: dict) -> dict[str, dict]:
    """score_config's scores for a built artifact (e.g. the standard recipe's INT8 graph, `qtool standard`), every
    window alone and unpadded: the bar a configuration must hold is then that graph's F1 on the same questions."""
    from ..graph.runtime import Protocol, artifact_session, predict_onnx

    # on the runtime it is built for ((c) on OpenVINO, as a team runs it), every window alone
    session = artifact_session(folder)
    return {name: _scores(examples, features, predict_onnx(session, features, protocol=Protocol.UNPADDED))
            for name, (examples, features) in workloads.items()}


def _scores(examples: Sequence[squad.SquadExample], features: squad.Features, preds) -> dict:
    answers = squad.postprocess(examples, features, preds.start_logits, preds.end_logits)
    em, f1 = squad.question_scores(answers, examples)
    return {**squad.scores_of(em, f1), "f1_by_question": f1, "f1_by_overlap": f1_by_third(f1, overlap_thirds(examples)[0])}


def paired_interval(ours: np.ndarray, theirs: np.ndarray, *, draws: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean F1 difference (points) of two configurations scored on the same questions, with a percentile bootstrap
    interval that resamples questions: on a few hundred questions a difference of 0.5 F1 is usually inside it."""
    diff = 100.0 * (np.asarray(ours) - np.asarray(theirs))
    rows = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    means = diff[rows].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100.0 - tail))
