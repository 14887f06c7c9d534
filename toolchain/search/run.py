"""`qtool search` and `qtool search --report`: check, search, finish once, and the result."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import optuna

from ..core.errors import InputError
from ..artifact import output
from ..core.length import LengthConfig
from qtool_runtime.contract import VARIANTS, Variant
from ..core.settings import SearchSettings
from ..core.pareto import pareto_front
from ..data.splits import spread_ids, trained_questions
from .shared_study import (StudyLock, call_storage, describe, finish_once, progress_of, storage_file)
from .recommend import RECOMMEND_TOLERANCE, confirm, confirmation_candidates, recommend, study_rows
from .samplers import SAMPLERS
from .scoring import reference_label, score_graph, scoring_workloads, summary
from .space import layers_and_variant, describe_space, ratios_of
from .study import IDENTITY, identity_of, load_study, run_study, open_study
from ..artifact import manifest as manifests


def check_out(out: str | Path, model_dir: str | Path, settings: SearchSettings) -> Path:
    """Refuse, before the search (`toolchain.output`), an --out that is one of its inputs (the model, the latency
    model, the study's storage, the reference graph) or a file that is not a previous search result."""
    inputs = (("--model", model_dir), ("--latency-model", settings.latency_model),
              ("--storage", storage_file(settings.storage)), ("--reference-graph", settings.reference_graph))
    return output.check_target(out, output.OutputKind.SEARCH_RESULT, inputs=inputs)


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

        manifests.load(Path(s.reference_graph))  # an artifact folder, or one line saying why not
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
    min_ratio, _ = describe_space(model_dir, settings.min_ratio)
    layers, trained = layers_and_variant(model_dir)
    s = replace(settings, min_ratio=min_ratio, variant=Variant(settings.variant or trained),
                latency_model=None if settings.latency_model is None else str(settings.latency_model))
    if s.route and Variant(s.variant).sees_padding:
        raise InputError(f"--route needs a variant that does not see padding (a routed graph trims padding), "
                         f"got '{s.variant}'")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start_from = [LengthConfig.parse(c, layers, s.seq_len, variant=s.variant) for c in s.start_from]
    for config in start_from:
        low = min(ratios_of(config).values())
        if low < min_ratio:
            raise InputError(f"--start-from {config.label} keeps {low:.2f} of a layer's tokens, below the searched "
                             f"space's {min_ratio:.2f}; lower --min-ratio")
    identity = identity_of(model_dir, s, layers)
    study, lock = open_study(settings=identity, search=s, layers=layers, start_from=start_from)
    study = run_study(study, lock, str(model_dir), s, log=log)
    return _result(model_dir, s, study, lock, identity=identity, log=log)


def search_report(model_dir: str | Path, storage: str, study_name: str = SearchSettings.study_name, *,
                  log: Callable[[str], None] = print) -> dict:
    """Where a shared study stands, from any machine: progress and the front so far; once the budget is complete,
    the finished result (the confirmation, computed once and stored in the study). Runs no search trial."""
    study, lock = load_study(SearchSettings(storage=storage, study_name=study_name))
    attrs = study.user_attrs
    if "search" not in attrs:
        raise InputError(f"study {study_name!r} in {describe(storage)} was not written by this qtool's search")
    s = SearchSettings(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in attrs["search"].items()},
                       storage=storage, study_name=study_name, trials=attrs.get("budget", SearchSettings.trials))
    layers, _ = layers_and_variant(model_dir)
    mine = identity_of(model_dir, s, layers)
    differ = sorted(k for k in IDENTITY if attrs["settings"].get(k) != mine[k])
    if differ:
        raise InputError(f"study {study_name!r} in {describe(storage)} searched another {' and '.join(differ)} "
                         f"than {model_dir}; give the model it searched")
    return _result(model_dir, s, study, lock, identity=mine, log=log)


def _result(model_dir: str | Path, s: SearchSettings, study: optuna.Study, lock: StudyLock, *, identity: dict,
            log: Callable[[str], None]) -> dict:
    """The search's result from the study as it stands; the finish (reference and confirmation) once the budget is
    complete, computed by one worker and read from the study by the others. `identity`: what a trial measures
    (identity_of), whose cost, workloads and left-out questions the result states."""
    progress = call_storage(lambda: progress_of(study, s.trials), s.storage)
    rows = call_storage(lambda: study_rows(study), s.storage)
    finish: dict = {"reference": None, "confirmation": None}
    if progress.done and (s.reference_graph or s.confirm_questions):
        finish = finish_once(study, lock, lambda: _finish(model_dir, s, rows, log=log), key=progress.complete, log=log)
    reference, confirmed = finish["reference"], finish["confirmation"]
    _, space = describe_space(model_dir, s.min_ratio)
    workloads = identity["workloads"]
    return {
        "objective": {"maximize": "mean F1 over the workloads (" + ", ".join(workloads) + ") on held-out SQuAD "
                                  f"train, unpadded windows, variant {s.variant}"
                                  + (", each candidate routed (full model up to its predicted crossover)" if s.route else ""),
                      "minimize": identity["cost"]},
        "space": space, "sampler": s.sampler, "squad_file": "train", "questions": s.questions, "offset": s.offset,
        "variant": str(s.variant), "workloads": workloads, "left_out_trained": identity.get("left_out_trained", 0),
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
