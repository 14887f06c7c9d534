"""From trials to a recommendation: the rows, the bar every workload and third must hold, the confirmation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import optuna

from ..core.length import LengthConfig
from ..core.settings import SearchSettings
from ..data.splits import spread_ids, trained_questions
from .scoring import paired_interval, reference_label, score_config, score_graph, scoring_workloads, summary


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
    return min((r for r in rows if holds(r, bar, tolerance)), key=lambda r: (r["cost"], -r["f1"]), default=None)


def holds(row: dict, full: dict, tolerance: float = RECOMMEND_TOLERANCE) -> bool:
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
    near = sorted((r for r in rows if r is not full and holds(r, bar, tolerance + margin)), key=lambda r: r["cost"])
    return [full] + near[:most]


def confirm(model_dir: str | Path, candidates: Sequence[dict], settings: SearchSettings, *, questions: int,
            reference_graph: str | Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Re-score `candidates` (search rows; the full one among them) on `questions` other train questions, spread
    like the search's and none of them (nor the last training stage's), and recommend from those scores.

    Why: the cheapest configuration within tolerance on a few hundred questions is the one most likely to be there
    by luck (a 200-question slice moves F1 by about 2 either way); a second slice says whether it holds. Each row
    keeps its search cost and F1 under `search_f1_by_workload`, and its paired difference from the full model (and
    from `reference_graph`, the bar when given) with a bootstrap interval. `settings` arrive resolved."""
    from ..model.drop_and_restore import load_qa_model

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
                                            variant=settings.variant), full_up_to=row.get("full_up_to", 0))
        results = score_config(model, workloads, config)
        full = full or (results if config.is_full else None)
        gaps = {"f1_vs_full_by_workload": paired_gaps(results, full) if full else {}}
        if reference:
            gaps["f1_vs_reference_by_workload"] = paired_gaps(results, reference)
        rows.append({**row, **summary(results), "search_f1_by_workload": row.get("f1_by_workload", {}), **gaps})
        log(f"  confirm {config.label:<28} F1 " + " / ".join(f"{r['f1']:6.2f}" for r in results.values())
            + "  (search: " + " / ".join(f"{f:6.2f}" for f in row.get("f1_by_workload", {}).values()) + ")"
            + "".join(f"  vs {key.split('_')[2]} " + " / ".join(f"{v['difference']:+.2f} [{v['low']:+.2f}, {v['high']:+.2f}]"
                                                               for v in by.values())
                      for key, by in gaps.items() if by and not (config.is_full and key == "f1_vs_full_by_workload")))
    return {"questions": questions, "margin": CONFIRM_MARGIN, "rows": rows, "reference": bar,
            "recommended": recommend(rows, reference=bar)}


def paired_gaps(results: dict[str, dict], against: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per workload, the paired F1 difference of `results` from `against` (same questions) and its interval."""
    return {name: dict(zip(("difference", "low", "high"),
                           paired_interval(r["f1_by_question"], against[name]["f1_by_question"])))
            for name, r in results.items()}
