"""Multi-objective search for length configurations on the F1-vs-FLOPs Pareto front (LAT's second stage).

LAT runs an evolutionary search; we use optuna's NSGA-II sampler, a maintained implementation of the same
idea (mutation + crossover + non-dominated sorting). A candidate is a per-layer keep ratio; the layer
count is ceil(previous count * ratio), so every candidate is a valid, non-increasing configuration.
Each candidate is scored with the PyTorch Drop-and-Restore model on a SQuAD slice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from . import squad
from .model import LengthConfig, flops_ratio, load_qa_model
from .runtime import predict_torch, score
from .verify import pareto_front


def config_from_ratios(ratios: list[float], seq_len: int) -> LengthConfig:
    keep, n = [], seq_len
    for r in ratios:
        n = max(1, min(n, math.ceil(n * r)))
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len)


def search_configs(
    model_dir: str | Path,
    trials: int = 40,
    squad_file: str = "dev",
    questions: int = 200,
    offset: int = 0,
    min_ratio: float = 0.5,
    seq_len: int = squad.MAX_LENGTH,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Search and return every evaluated configuration plus the Pareto-optimal ones (cheapest first)."""
    import optuna

    if not 0.0 < min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
    model, tokenizer = load_qa_model(model_dir)
    layers = len(model.base_model.encoder.layer)
    hidden, ffn = model.config.hidden_size, model.config.intermediate_size
    examples = squad.load_squad(squad_file, limit=questions, offset=offset)
    features = squad.featurize(examples, tokenizer, max_length=seq_len)
    evaluated: dict[str, dict] = {}

    def evaluate(config: LengthConfig) -> dict:
        key = str(config)
        if key not in evaluated:
            result = score(examples, features, predict_torch(model, features, config))
            evaluated[key] = {
                "config": config.label,
                "flops_ratio": flops_ratio(config, hidden, ffn),
                "f1": result["f1"],
                "exact_match": result["exact_match"],
            }
            row = evaluated[key]
            log(f"  {row['config']:<28} FLOPs {row['flops_ratio']:.3f}  F1 {row['f1']:6.2f}")
        return evaluated[key]

    def objective(trial: "optuna.Trial") -> tuple[float, float]:
        ratios = [trial.suggest_float(f"r{i}", min_ratio, 1.0) for i in range(layers)]
        row = evaluate(config_from_ratios(ratios, seq_len))
        return row["f1"], row["flops_ratio"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, trials // 3)))
    )
    study.enqueue_trial({f"r{i}": 1.0 for i in range(layers)})  # the full model anchors the front
    study.optimize(objective, n_trials=trials, show_progress_bar=True)
    rows = list(evaluated.values())
    front = [rows[i] for i in pareto_front([(r["flops_ratio"], r["f1"]) for r in rows])]
    return {"squad_file": str(squad_file), "questions": len(examples), "offset": offset, "trials": trials,
            "evaluated": rows, "pareto": front}
