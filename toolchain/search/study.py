"""The search as an optuna study: created or joined once per worker, run to its budget, workers spawned."""

from __future__ import annotations

import multiprocessing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import optuna

from ..core.errors import InputError
from ..data import squad
from ..core.length import LengthConfig
from qtool_runtime.contract import LengthRule, Variant
from ..core.settings import SearchSettings
from ..data.splits import trained_questions
from .shared_study import (Progress, StudyLock, call_storage, describe, file_digest, model_digest,
                           open_storage, run_budget, study_lock)
from .samplers import make_sampler
from .scoring import make_objective
from .space import SEARCH_SAMPLING, describe_cost, ratios_of, workload_neighbours


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
    study, lock = load_study(settings)
    _run_trials(study, lock, make_objective(model_dir, settings), settings, progress=False)


def load_study(settings: SearchSettings) -> tuple[optuna.Study, StudyLock]:
    """An existing study in `settings.storage`, with its lock; a missing one is one line."""
    backend = open_storage(settings.storage)
    try:
        study = call_storage(lambda: optuna.load_study(
            study_name=settings.study_name, storage=backend,
            sampler=make_sampler(settings.sampler, settings.seed, settings.population)), settings.storage)
    except KeyError:
        raise InputError(f"no study {settings.study_name!r} in {describe(settings.storage)}") from None
    return study, study_lock(backend, settings.storage, settings.study_name)


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
        if recorded not in (None, settings):
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


def identity_of(model_dir: str | Path, s: SearchSettings, layers: int) -> dict:
    """What a trial measures, recorded in the study: a worker whose command differs here is refused."""
    workloads = [squad.workload_name(n) for n in workload_neighbours(s)]
    recorded = dict(questions=s.questions, offset=s.offset, sampling=SEARCH_SAMPLING, workloads=workloads,
                    rule=LengthRule.CAP, seq_len=s.seq_len, min_ratio=s.min_ratio,  # rule: the one graphs run (older studies record it)
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


def run_study(study: optuna.Study, lock: StudyLock, model_dir: str, settings: SearchSettings, *,
               log: Callable[[str], None]) -> optuna.Study:
    """Run the study until it holds `trials` complete trials: here, or in `workers` spawned processes sharing it."""
    if settings.workers == 1:
        _run_trials(study, lock, make_objective(model_dir, settings, log=log), settings, progress=True)
        return study
    jobs = [(model_dir, replace(settings, seed=settings.seed + i)) for i in range(settings.workers)]
    with multiprocessing.get_context("spawn").Pool(settings.workers) as pool:
        pool.map(_worker, jobs)
    return load_study(settings)[0]
