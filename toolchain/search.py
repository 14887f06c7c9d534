"""Multi-objective search for length configurations (LAT's second stage), on the deployment protocol.

A candidate is scored where nothing is reported and how it will be used: on held-out SQuAD *train*
questions (never dev, never calibration or quantization-tuning questions), every window at its real length
under the length rule the graph will ship with. Its cost is the encoder's multiply-adds at those real
lengths relative to the plain model run on the same unpadded windows, which is what the standard recipe
pays (at padded 384 a configuration looks far cheaper than it is on real inputs).

A candidate is a per-layer keep ratio; layer i keeps ceil(k_{i-1} * r_i) of a 384-token input, so every
candidate is a valid, non-increasing configuration. By default the ratios span what LengthDrop trained
(each layer keeps 1 - length_drop_ratio .. 100 % of the previous one, read from the model's training record).

Two samplers over the same space: optuna's NSGA-II, and LAT's evolutionary search (children of the
current Pareto front by mutation or crossover). Trials live in an optuna study, in memory or in shared
storage (a journal file, SQLite, or an RDB URL), so a search resumes and many processes or machines can
join it.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import optuna

from .core.errors import InputError
from .artifact import output
from .data import squad
from .data.overlap import f1_by_third, overlap_thirds
from .model.families import dims_of
from .core.length import DEFAULT_LENGTH_RULE, DEFAULT_VARIANT, LengthConfig, LengthRule
from qtool_runtime.contract import VARIANTS, Engine, Variant
from qtool_runtime.engines import runs_exactly
from .graph.settings import Sampler, SearchSettings
from .core.pareto import pareto_front
from .data.splits import search_examples, spread_ids, trained_questions
from .data.splits import training_args as _training_args
from .shared_study import (Progress, StudyLock, call_storage, describe, file_digest, finish_once,
                           model_digest, open_storage, progress_of, run_budget, storage_file, study_lock,
                           worker_name)

SAMPLERS = Sampler.choices()
SEARCH_SAMPLING = "spread over SQuAD train"  # recorded in a study: studies over contiguous slices are not resumed


def config_from_ratios(ratios: Sequence[float], seq_len: int, rule: str = DEFAULT_LENGTH_RULE,
                       variant: str = DEFAULT_VARIANT) -> LengthConfig:
    keep, n = [], seq_len
    for r in ratios:
        n = max(1, min(n, math.ceil(n * r)))
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, rule, variant)


def trained_space(model_dir: str | Path) -> tuple[float | None, str, str | None]:
    """(smallest per-layer keep ratio, record file, length rule) LengthDrop trained this model with.

    Records written before `qtool train --length-rule` existed sampled per batch width: the 'ratio' rule."""
    for path, args in _training_args(model_dir):
        if args.get("length_drop"):
            return 1.0 - float(args.get("length_drop_ratio", 0.2)), path.name, args.get("length_rule", LengthRule.RATIO)  # records before the rule was recorded trained ratio
    return None, "no LengthDrop training record", None


def macs_ratio_at_lengths(config: LengthConfig, lengths: np.ndarray, hidden: int, ffn: int) -> float:
    """Encoder multiply-adds of `config` on windows of these real lengths, relative to the plain model on them."""
    from .model.drop_and_restore import flops

    full = LengthConfig.full(len(config.keep), config.seq_len, config.rule)
    unique, counts = np.unique(lengths, return_counts=True)
    ours = sum(c * flops(config.for_window(int(n)), hidden, ffn, int(n)) for n, c in zip(unique, counts))
    plain = sum(c * flops(full, hidden, ffn, int(n)) for n, c in zip(unique, counts))
    return float(ours / plain)


class EvolutionSampler(optuna.samplers.BaseSampler):
    """LAT's evolutionary search as an optuna sampler: random until `population` trials are done, then each
    trial is a child of the current Pareto front, by mutation (each gene resampled with `gene_prob`) or by
    uniform crossover of two front members."""

    def __init__(self, population: int = 12, mutation_prob: float = 0.5, gene_prob: float = 0.3, seed: int = 0):
        self.population, self.mutation_prob, self.gene_prob = population, mutation_prob, gene_prob
        self.rng = np.random.default_rng(seed)
        self.random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial):
        return optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))

    def sample_relative(self, study, trial, search_space):
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not search_space or len(done) < self.population:
            return {}
        front = study.best_trials
        first = front[self.rng.integers(len(front))].params
        if len(front) < 2 or self.rng.random() < self.mutation_prob:
            return {k: float(self.rng.uniform(d.low, d.high)) if self.rng.random() < self.gene_prob else first[k]
                    for k, d in search_space.items()}
        second = front[self.rng.integers(len(front))].params
        return {k: (first if self.rng.random() < 0.5 else second)[k] for k in search_space}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.random.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(name: str, seed: int, population: int) -> optuna.samplers.BaseSampler:
    if name == Sampler.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == Sampler.EVOLUTION:
        return EvolutionSampler(population=population, seed=seed)
    raise InputError(f"sampler {name!r} is unknown; choose one of {SAMPLERS}")


def check_out(out: str | Path, model_dir: str | Path, settings: SearchSettings) -> Path:
    """Refuse, before the search (`toolchain.output`), an --out that is one of its inputs (the model, the latency
    model, the study's storage, the reference graph) or a file that is not a previous search result."""
    inputs = (("--model", model_dir), ("--latency-model", settings.latency_model),
              ("--storage", storage_file(settings.storage)), ("--reference-graph", settings.reference_graph))
    return output.check_target(out, output.OutputKind.SEARCH_RESULT, inputs=inputs)


def make_objective(model_dir: str, settings: SearchSettings, *, log: Callable[[str], None] = print):
    """The search objective over a model loaded once per process: F1 up (the mean over the workloads:
    paragraphs, and documents when `neighbours` > 0); cost down over every window of every workload
    (predicted latency at real lengths if a latency model is given, else MACs at real lengths).
    `settings` arrive resolved (search_configs): min_ratio and variant are set."""
    from .evaluate.latency import LatencyModel

    from .model.drop_and_restore import load_qa_model

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
        config = config_from_ratios(ratios, s.seq_len, s.length_rule, s.variant)
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
    for n in (0, settings.neighbours) if settings.neighbours else (0,):
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
    from .graph.runtime import Protocol, predict_torch

    return {name: _scores(examples, features, predict_torch(model, features, config, protocol=Protocol.UNPADDED))
            for name, (examples, features) in workloads.items()}


def reference_label(folder: str | Path) -> str:
    """A reference graph's name in the search's rows: a run-time configuration graph is scored at its full entry."""
    from .artifact import manifest as manifests

    folder = Path(folder)
    return f"{folder.name}@full" if manifests.load(folder).is_runtime else folder.name


def score_graph(folder: str | Path, workloads: dict) -> dict[str, dict]:
    """score_config's scores for a built artifact (e.g. the standard recipe's INT8 graph, `qtool standard`), every
    window alone and unpadded: the bar a configuration must hold is then that graph's F1 on the same questions."""
    from .artifact import manifest as manifests
    from .graph.runtime import Protocol, onnx_session, predict_onnx

    folder = Path(folder)
    manifest = manifests.load(folder)
    # on the runtime it is built for ((c) on OpenVINO, as a team runs it), every window alone
    session = onnx_session(folder / manifest.graph, engine=Engine(manifest.engine), exact=runs_exactly(manifest.kind))
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


def _run_trials(study: optuna.Study, lock: StudyLock, objective, settings: SearchSettings, progress: bool) -> None:
    """Add trials until the study holds `settings.trials` complete ones, whoever else is adding them."""
    from tqdm.auto import tqdm

    bar = tqdm(total=settings.trials, desc="search", unit="trial", dynamic_ncols=True, disable=not progress)

    def show(p: Progress) -> None:
        bar.n = min(p.complete, p.budget)
        bar.set_postfix_str(f"{p.running} running" + (f", {p.failed} retried" if p.failed else ""))
        bar.refresh()

    run_budget(study, objective, settings.trials, lock, storage=settings.storage, on_progress=show)
    bar.close()


def _worker(job: tuple[str, SearchSettings]) -> None:
    """One search process joining the shared study (spawned: loads its own model, one thread)."""
    import torch

    model_dir, settings = job
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, lock = _load_study(settings)
    _run_trials(study, lock, make_objective(model_dir, settings), settings, progress=False)


def _load_study(settings: SearchSettings) -> tuple[optuna.Study, StudyLock]:
    """An existing study in `settings.storage`, with its lock; a missing one is one line."""
    backend = open_storage(settings.storage)
    try:
        study = call_storage(lambda: optuna.load_study(
            study_name=settings.study_name, storage=backend,
            sampler=make_sampler(settings.sampler, settings.seed, settings.population)), settings.storage)
    except KeyError:
        raise InputError(f"no study {settings.study_name!r} in {describe(settings.storage)}") from None
    return study, study_lock(backend, settings.storage, settings.study_name)


def describe_space(model_dir: str | Path, min_ratio: float | None, length_rule: str) -> tuple[float, str]:
    """(the smallest keep ratio searched, a sentence saying how it relates to what LengthDrop trained)."""
    trained, record, trained_rule = trained_space(model_dir)
    if min_ratio is None:
        min_ratio = trained if trained is not None else 0.5
    if not 0.0 < min_ratio <= 1.0:
        raise InputError(f"min_ratio must be in (0, 1], got {min_ratio}")
    space = f"per-layer keep ratio in [{min_ratio:.2f}, 1]"
    if trained is None:
        space += "; no LengthDrop training record, so not what training covered"
    else:
        within = "below" if min_ratio < trained - 1e-9 else "within"
        space += f", {within} what LengthDrop trained ([{trained:.2f}, 1], {record})"
    if trained_rule is not None:
        space += (f"; LengthDrop sampled under the {trained_rule} rule"
                  + ("" if trained_rule == length_rule else f", not the {length_rule} rule searched here"))
    return min_ratio, space


def describe_cost(latency_model: str | Path | None, layers: int, model_dir: str | Path) -> str:
    if latency_model is None:
        return "encoder MACs at the windows' real lengths / plain model on the same windows"
    import hashlib

    from .evaluate.latency import LatencyModel

    timing = LatencyModel.load(latency_model)
    if timing.layers != layers:
        raise InputError(f"latency model {latency_model} was fitted on {timing.layers}-layer graphs; "
                         f"{model_dir} has {layers} layers")
    digest = hashlib.sha256(Path(latency_model).read_bytes()).hexdigest()[:12]
    return (f"INT8 latency at the windows' real lengths (batch 1) / {timing.reference} on the same windows, "
            f"predicted by the latency model {Path(latency_model).name} (sha256 {digest}) fitted on "
            f"{timing.machine.get('cpu')}")


def open_study(*, settings: dict, search: SearchSettings, layers: int, start_from: Sequence[LengthConfig] = ()
               ) -> tuple[optuna.Study, StudyLock]:
    """Create or join a study. A study is identified by its settings (model, data, slice, workloads, rule, space,
    cost): joining one with other settings would mix trials that measured different things, so it is refused. The
    first worker records the settings (and the whole search, for `--report`) and queues the anchors, under the
    study's lock so that workers starting together queue them once."""
    s = search
    backend = open_storage(s.storage)
    lock = study_lock(backend, s.storage, s.study_name)
    with lock:
        study = call_storage(lambda: optuna.create_study(
            directions=["maximize", "minimize"], storage=backend, study_name=s.study_name,
            load_if_exists=s.storage is not None, sampler=make_sampler(s.sampler, s.seed, s.population)), s.storage)
        recorded = study.user_attrs.get("settings")
        if recorded is None and study.get_trials(deepcopy=False):
            recorded = {"cost": study.user_attrs.get("cost")}  # a study from before settings were recorded
        if recorded is not None:
            recorded = {**{k: settings[k] for k in IDENTITY if k not in recorded}, **recorded}  # older studies
        if recorded is not None and recorded != settings:
            differ = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
            raise InputError(f"study {s.study_name!r} in {describe(s.storage)} was run with other settings "
                             f"({', '.join(differ)}); use a new --study for this one")
        if study.user_attrs.get("settings") is None:
            study.set_user_attr("settings", settings)
            study.set_user_attr("search", _recorded_search(s))
        study.set_user_attr("budget", s.trials)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial({f"r{i}": 1.0 for i in range(layers)})  # the full model anchors the front
            for config in start_from:  # then the configurations the user wants compared (e.g. today's shipped one)
                study.enqueue_trial(ratios_of(config))
    return study, lock


# The settings that say which model and data a study measured; studies from before they were recorded lack them.
IDENTITY = ("model", "data")
# What a worker's command line may change without changing what a trial measures (not recorded in `search`).
PER_WORKER = ("storage", "study_name", "workers", "seed", "trials")


def _recorded_search(s: SearchSettings) -> dict:
    """The resolved search, so `search --report` can finish a study from anywhere with only its storage and name."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if k not in PER_WORKER}


def ratios_of(config: LengthConfig) -> dict[str, float]:
    """The trial parameters config_from_ratios turns back into `config` (ceil(n * (k - 1/2) / n) = k)."""
    params, n = {}, config.seq_len
    for i, k in enumerate(config.keep):
        if k is None:
            raise InputError(f"{config.label}: a search trial cannot skip a layer")
        params[f"r{i}"] = min(1.0, (k - 0.5) / n) if k < n else 1.0
        n = k
    return params


def study_rows(study) -> list[dict]:
    """One row per distinct configuration among the completed trials."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    unique: dict[str, dict] = {}
    for t in done:
        row = {"config": t.user_attrs["config"], "f1": t.values[0], "cost": t.values[1],
               "macs_unpadded": t.user_attrs.get("macs_unpadded", t.values[1]),
               "exact_match": t.user_attrs["exact_match"], "trial": t.number}
        for key in ("latency", "f1_by_workload", "f1_by_third", "cost_by_workload", "full_up_to"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        unique.setdefault(row["config"], row)
    return list(unique.values())


# How much F1 a recommended configuration may give up against the full model, on each workload.
RECOMMEND_TOLERANCE = 0.5
# ... and on each lexical-overlap third of each workload (toolchain/overlap.py): a third is a third of the questions,
# so its F1 is noisier; a configuration must not buy its mean with the paraphrased questions.
THIRD_TOLERANCE = 1.0


def _full_row(rows: Sequence[dict]) -> dict | None:
    return next((r for r in rows if r["config"] == "full"), None)


def recommend(rows: Sequence[dict], tolerance: float = RECOMMEND_TOLERANCE, *, reference: dict | None = None
              ) -> dict | None:
    """The cheapest evaluated configuration whose F1 on every workload is within `tolerance` of the reference's on
    the same questions (the promise is speed at the same accuracy): the full model's, or a reference graph's
    (`reference`, e.g. the standard recipe's). None without a full row or when none holds."""
    bar = reference or _full_row(rows)
    if bar is None:
        return None
    return min((r for r in rows if _holds(r, bar, tolerance)), key=lambda r: (r["cost"], -r["f1"]), default=None)


def _holds(row: dict, full: dict, tolerance: float) -> bool:
    """Within `tolerance` of the bar on every workload, and within THIRD_TOLERANCE (plus what `tolerance` adds to
    RECOMMEND_TOLERANCE: a confirmation's margin) on every overlap third the bar was scored on."""
    by, ref = row.get("f1_by_workload", {"all": row["f1"]}), full.get("f1_by_workload", {"all": full["f1"]})
    thirds, ref_thirds = row.get("f1_by_third", {}), full.get("f1_by_third", {})
    slack = THIRD_TOLERANCE + max(0.0, tolerance - RECOMMEND_TOLERANCE)
    return (all(by[name] >= ref[name] - tolerance for name in ref)
            and all(thirds[name] >= ref_thirds[name] - slack for name in ref_thirds if name in thirds))


# Configurations this much below the recommendation bar on the search's questions are still re-scored by a confirmation.
CONFIRM_MARGIN = 2.0


# At most this many configurations (the cheapest near the bar) are confirmed, besides the full model.
CONFIRM_MAX = 8


def confirmation_candidates(rows: Sequence[dict], *, tolerance: float = RECOMMEND_TOLERANCE,
                            margin: float = CONFIRM_MARGIN, most: int = CONFIRM_MAX,
                            reference: dict | None = None) -> list[dict]:
    """The full row, then the cheapest `most` rows within `tolerance + margin` of the bar (the full row, or
    `reference`) on every workload, cheapest first. Not only the Pareto front: on a small slice a configuration can
    be dominated by one that was lucky."""
    full = _full_row(rows)
    if full is None:
        return []
    bar = reference or full
    near = sorted((r for r in rows if r is not full and _holds(r, bar, tolerance + margin)), key=lambda r: r["cost"])
    return [full] + near[:most]


def confirm(model_dir: str | Path, candidates: Sequence[dict], settings: SearchSettings, *, questions: int,
            reference_graph: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Re-score `candidates` (search rows; the full one among them) on `questions` other train questions, spread
    like the search's and none of them (nor the last training stage's), and recommend from those scores.

    Why: the cheapest configuration within tolerance on a few hundred questions is the one most likely to be there
    by luck (a 200-question slice moves F1 by about 2 either way); a second slice says whether it holds. Each row
    keeps its search cost and F1 under `search_f1_by_workload`, and its paired difference from the full model (and
    from `reference_graph`, the bar when given) with a bootstrap interval. `settings` arrive resolved."""
    from .model.drop_and_restore import load_qa_model

    model, tokenizer = load_qa_model(model_dir)
    trained = trained_questions(model_dir)
    searched = frozenset(spread_ids(settings.questions, settings.offset, trained))
    workloads = scoring_workloads(tokenizer, settings, questions=questions, offset=settings.offset,
                                  exclude=searched | trained)
    reference, bar = None, None
    if reference_graph is not None:
        reference = score_graph(reference_graph, workloads)
        bar = {"config": reference_label(reference_graph), **summary(reference)}
        log(f"  reference {bar['config']:<26} F1 " + " / ".join(f"{r['f1']:6.2f}" for r in reference.values()))
    rows, full = [], None
    for row in candidates:
        config = replace(LengthConfig.parse(row["config"], model.config.num_hidden_layers, settings.seq_len,
                                            settings.length_rule, settings.variant), full_up_to=row.get("full_up_to", 0))
        results = score_config(model, workloads, config)
        full = full or (results if config.is_full else None)
        gaps = {"f1_vs_full_by_workload": _gaps(results, full) if full else {}}
        if reference:
            gaps["f1_vs_reference_by_workload"] = _gaps(results, reference)
        rows.append({**row, **summary(results), "search_f1_by_workload": row.get("f1_by_workload", {}), **gaps})
        log(f"  confirm {config.label:<28} F1 " + " / ".join(f"{r['f1']:6.2f}" for r in results.values())
            + "  (search: " + " / ".join(f"{f:6.2f}" for f in row.get("f1_by_workload", {}).values()) + ")"
            + "".join(f"  vs {key.split('_')[2]} " + " / ".join(f"{v['difference']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"
                                                               for v in by.values())
                      for key, by in gaps.items() if by and not (config.is_full and key == "f1_vs_full_by_workload")))
    return {"questions": questions, "margin": CONFIRM_MARGIN, "rows": rows, "reference": bar,
            "recommended": recommend(rows, reference=bar)}


def _gaps(results: dict[str, dict], against: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per workload, the paired F1 difference of `results` from `against` (same questions) and its interval."""
    return {name: dict(zip(("difference", "low", "high"),
                           paired_interval(r["f1_by_question"], against[name]["f1_by_question"])))
            for name, r in results.items()}


def _check_arguments(model_dir: str | Path, settings: SearchSettings) -> None:
    """Refuse a search that cannot run, before any model is loaded or process started."""
    s = settings
    if s.sampler not in SAMPLERS:
        raise InputError(f"sampler {s.sampler!r} is unknown; choose one of {SAMPLERS}")
    if s.variant is not None and s.variant not in VARIANTS:
        raise InputError(f"variant {s.variant!r} is unknown; choose one of {VARIANTS}")
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    if s.workers < 1:
        raise InputError(f"workers must be at least 1, got {s.workers}")
    if s.workers > 1 and s.storage is None:
        raise InputError("several workers must share a study: give --storage (a journal file, sqlite:///FILE or an RDB URL)")
    if s.neighbours < 0:
        raise InputError(f"neighbours must be 0 or more paragraphs, got {s.neighbours}")
    if s.route and not s.latency_model:
        raise InputError("--route needs --latency-model: the crossover where the full graph stops being the faster "
                         "one is predicted from it (MACs never favour the full model)")
    if s.reference_graph is not None:
        from .artifact import manifest as manifests

        manifests.load(Path(s.reference_graph))  # an artifact folder, or one line saying why not
    if s.route and s.length_rule != LengthRule.CAP:
        raise InputError(f"--route needs the cap rule (a routed graph trims padding), got '{s.length_rule}'")
    spread_ids(s.questions, s.offset, trained_questions(model_dir))  # the slice exists


def search_configs(
    model_dir: str | Path,
    settings: SearchSettings = SearchSettings(),
    *,
    log: Callable[[str], None] = print,
) -> dict:
    """Search and return every evaluated configuration plus the Pareto-optimal ones (cheapest first).

    Each candidate is scored on the same held-out questions twice: on their own paragraphs and, with
    `neighbours` > 0, as documents (contexts widened with that many neighbouring paragraphs each side, so
    windows are full of real tokens). F1 is the mean of the two; the cost is over every window of both.

    With `workers` > 1, that many local processes join one study in `storage` (workers must share one).
    Re-running with the same storage, study and settings resumes it until it holds `trials` completed trials;
    other machines join by running the same command against the same RDB URL.

    The cost minimised is the INT8 latency predicted by `latency_model` (a `qtool fit-latency` file) at the
    windows' real lengths, relative to the standard recipe's graph, or without one the MACs at real lengths.
    """
    _check_arguments(model_dir, settings)
    min_ratio, _ = describe_space(model_dir, settings.min_ratio, settings.length_rule)
    layers, trained = _layers_and_variant(model_dir)
    s = replace(settings, min_ratio=min_ratio, variant=Variant(settings.variant or trained),
                latency_model=None if settings.latency_model is None else str(settings.latency_model))
    if s.route and Variant(s.variant).sees_padding:
        raise InputError(f"--route needs a variant that does not see padding (a routed graph trims padding), "
                         f"got '{s.variant}'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start_from = [LengthConfig.parse(c, layers, s.seq_len, s.length_rule, s.variant) for c in s.start_from]
    for config in start_from:
        low = min(ratios_of(config).values())
        if low < min_ratio:
            raise InputError(f"--start-from {config.label} keeps {low:.2f} of a layer's tokens, below the searched "
                             f"space's {min_ratio:.2f}; lower --min-ratio")
    study, lock = open_study(settings=_identity(model_dir, s, layers), search=s, layers=layers, start_from=start_from)
    study = _run_study(study, lock, str(model_dir), s, log=log)
    return _result(model_dir, s, study, lock, layers=layers, log=log)


def search_report(model_dir: str | Path, storage: str, study_name: str = SearchSettings.study_name, *,
                  log: Callable[[str], None] = print) -> dict:
    """Where a shared study stands, from any machine: progress and the front so far; once the budget is complete,
    the finished result (the confirmation, computed once and stored in the study). Runs no search trial."""
    study, lock = _load_study(SearchSettings(storage=storage, study_name=study_name))
    attrs = study.user_attrs
    if "search" not in attrs:
        raise InputError(f"study {study_name!r} in {describe(storage)} was not written by this qtool's search")
    s = SearchSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs["search"].items()},
                       storage=storage, study_name=study_name, trials=attrs.get("budget", SearchSettings.trials))
    layers, _ = _layers_and_variant(model_dir)
    mine = _identity(model_dir, s, layers)
    differ = sorted(k for k in IDENTITY if attrs["settings"].get(k) != mine[k])
    if differ:
        raise InputError(f"study {study_name!r} in {describe(storage)} searched another {' and '.join(differ)} "
                         f"than {model_dir}; give the model it searched")
    return _result(model_dir, s, study, lock, layers=layers, log=log)


def _identity(model_dir: str | Path, s: SearchSettings, layers: int) -> dict:
    """What a trial measures, recorded in the study: a worker whose command differs here is refused."""
    workloads = [squad.workload_name(n) for n in ((0, s.neighbours) if s.neighbours else (0,))]
    recorded = dict(questions=s.questions, offset=s.offset, sampling=SEARCH_SAMPLING, workloads=workloads,
                    rule=s.length_rule, seq_len=s.seq_len, min_ratio=s.min_ratio,
                    cost=describe_cost(s.latency_model, layers, model_dir),
                    model=model_digest(model_dir), data=file_digest(squad.resolve_squad_file("train")))
    if s.variant != Variant.QTOOL:  # studies from before the variant was searchable ran qtool
        recorded["variant"] = str(s.variant)
    if s.route:
        recorded["route"] = True
    left_out = len(trained_questions(model_dir))
    if left_out:  # studies from before the last stage's questions were left out recorded nothing
        recorded["left_out_trained"] = left_out
    return recorded


def _result(model_dir: str | Path, s: SearchSettings, study: optuna.Study, lock: StudyLock, *, layers: int,
            log: Callable[[str], None]) -> dict:
    """The search's result from the study as it stands; the finish (reference and confirmation) once the budget is
    complete, computed by one worker and read from the study by the others."""
    progress = call_storage(lambda: progress_of(study, s.trials), s.storage)
    rows = call_storage(lambda: study_rows(study), s.storage)
    finish: dict = {"reference": None, "confirmation": None}
    if progress.done and (s.reference_graph or s.confirm_questions):
        finish = finish_once(study, lock, lambda: _finish(model_dir, s, rows, log=log), key=progress.complete, log=log)
    reference, confirmed = finish["reference"], finish["confirmation"]
    _, space = describe_space(model_dir, s.min_ratio, s.length_rule)
    workloads = [squad.workload_name(n) for n in ((0, s.neighbours) if s.neighbours else (0,))]
    return {
        "objective": {"maximize": "mean F1 over the workloads (" + ", ".join(workloads) + ") on held-out SQuAD "
                                  f"train, unpadded windows, length rule {s.length_rule}, variant {s.variant}"
                                  + (", each candidate routed (full model up to its predicted crossover)" if s.route else ""),
                      "minimize": describe_cost(s.latency_model, layers, model_dir)},
        "space": space, "sampler": s.sampler, "squad_file": "train", "questions": s.questions, "offset": s.offset,
        "variant": str(s.variant), "workloads": workloads, "left_out_trained": len(trained_questions(model_dir)),
        "recommended": recommend(rows, reference=reference) if confirmed is None else confirmed["recommended"],
        "recommended_on_search_slice": recommend(rows, reference=reference), "confirmation": confirmed,
        "reference": reference,
        "recommend_tolerance": RECOMMEND_TOLERANCE,
        "trials": progress.complete, "budget": s.trials, "complete": progress.done, "progress": progress.line(),
        "study": s.study_name, "storage": describe(s.storage), "evaluated": rows,
        "pareto": [rows[i] for i in pareto_front([(r["cost"], r["f1"]) for r in rows])],
    }


def _finish(model_dir: str | Path, s: SearchSettings, rows: list[dict], *, log: Callable[[str], None]) -> dict:
    """The reference's row and the confirmation: the slow end of a search, done once per study (JSON-plain, so the
    study can hold it for the other workers)."""
    reference = _reference_row(model_dir, s, log=log) if s.reference_graph else None
    confirmed = None
    if s.confirm_questions:
        confirmed = confirm(model_dir, confirmation_candidates(rows, reference=reference), s,
                            questions=s.confirm_questions, reference_graph=s.reference_graph, log=log)
    return json.loads(json.dumps({"reference": reference, "confirmation": confirmed}, default=float))


def _reference_row(model_dir: str | Path, settings: SearchSettings, *, log: Callable[[str], None]) -> dict:
    """The reference graph scored on the search's own questions: the bar of the search slice's recommendation."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    workloads = scoring_workloads(tokenizer, settings, questions=settings.questions, offset=settings.offset,
                                  exclude=trained_questions(model_dir))
    scored = score_graph(settings.reference_graph, workloads)
    label = reference_label(settings.reference_graph)
    log(f"  reference {label:<26} F1 " + " / ".join(f"{r['f1']:6.2f}" for r in scored.values()))
    return {"config": label, **summary(scored)}


def _layers_and_variant(model_dir: str | Path) -> tuple[int, str]:
    """The model's layer count and the Drop-and-Restore variant it was trained with, from its config alone."""
    from transformers import AutoConfig

    from .model.drop_and_restore import recorded_variant

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return config.num_hidden_layers, recorded_variant(config)


def _run_study(study: optuna.Study, lock: StudyLock, model_dir: str, settings: SearchSettings, *,
               log: Callable[[str], None]) -> optuna.Study:
    """Run the study until it holds `trials` complete trials: here, or in `workers` spawned processes sharing it."""
    if settings.workers == 1:
        _run_trials(study, lock, make_objective(model_dir, settings, log=log), settings, progress=True)
        return study
    jobs = [(model_dir, replace(settings, seed=settings.seed + i)) for i in range(settings.workers)]
    with multiprocessing.get_context("spawn").Pool(settings.workers) as pool:
        pool.map(_worker, jobs)
    return _load_study(settings)[0]
