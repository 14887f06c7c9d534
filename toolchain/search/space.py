"""The searched space: a trial's keep ratios as a length configuration, what LengthDrop trained, the cost."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import InputError
from ..core.length import DEFAULT_VARIANT, LengthConfig, LengthRule
from ..data.splits import training_args
from ..core.settings import SearchSettings


SEARCH_SAMPLING = "spread over SQuAD train"  # recorded in a study: studies over contiguous slices are not resumed


def config_from_ratios(ratios: Sequence[float], seq_len: int,
                       variant: str = DEFAULT_VARIANT) -> LengthConfig:
    keep, n = [], seq_len
    for r in ratios:
        n = max(1, min(n, math.ceil(n * r)))
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, variant=variant)


def trained_space(model_dir: str | Path) -> tuple[float | None, str, str | None]:
    """(smallest per-layer keep ratio, record file, length rule) LengthDrop trained this model with.

    Records written before `qtool train --length-rule` existed sampled per batch width: the 'ratio' rule."""
    for path, args in training_args(model_dir):
        if args.get("length_drop"):
            return 1.0 - float(args.get("length_drop_ratio", 0.2)), path.name, args.get("length_rule", LengthRule.RATIO)  # records before the rule was recorded trained ratio
    return None, "no LengthDrop training record", None


def macs_ratio_at_lengths(config: LengthConfig, lengths: np.ndarray, hidden: int, ffn: int) -> float:
    """Encoder multiply-adds of `config` on windows of these real lengths, relative to the plain model on them."""
    from ..model.drop_and_restore import flops

    full = LengthConfig.full(len(config.keep), config.seq_len)
    unique, counts = np.unique(lengths, return_counts=True)
    ours = sum(c * flops(config.for_window(int(n)), hidden, ffn, int(n)) for n, c in zip(unique, counts))
    plain = sum(c * flops(full, hidden, ffn, int(n)) for n, c in zip(unique, counts))
    return float(ours / plain)


def describe_space(model_dir: str | Path, min_ratio: float | None) -> tuple[float, str]:
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
                  + ("" if trained_rule == LengthRule.CAP else f", not the {LengthRule.CAP} rule graphs run"))
    return min_ratio, space


def describe_cost(latency_model: str | Path | None, layers: int, model_dir: str | Path) -> str:
    if latency_model is None:
        return "encoder MACs at the windows' real lengths / plain model on the same windows"

    from ..evaluate.latency import LatencyModel

    timing = LatencyModel.load(latency_model)
    if timing.layers != layers:
        raise InputError(f"latency model {latency_model} was fitted on {timing.layers}-layer graphs; "
                         f"{model_dir} has {layers} layers")
    digest = hashlib.sha256(Path(latency_model).read_bytes()).hexdigest()[:12]
    return (f"INT8 latency at the windows' real lengths (batch 1) / {timing.reference} on the same windows, "
            f"predicted by the latency model {Path(latency_model).name} (sha256 {digest}) fitted on "
            f"{timing.machine.get('cpu')}")


def ratios_of(config: LengthConfig) -> dict[str, float]:
    """The trial parameters config_from_ratios turns back into `config` (ceil(n * (k - 1/2) / n) = k)."""
    params, n = {}, config.seq_len
    for i, k in enumerate(config.keep):
        if k is None:
            raise InputError(f"{config.label}: a search trial cannot skip a layer")
        params[f"r{i}"] = min(1.0, (k - 0.5) / n) if k < n else 1.0
        n = k
    return params


def layers_and_variant(model_dir: str | Path) -> tuple[int, str]:
    """The model's layer count and the Drop-and-Restore variant it was trained with, from its config alone."""
    from transformers import AutoConfig

    from ..model.drop_and_restore import recorded_variant

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    return config.num_hidden_layers, recorded_variant(config)


def workload_neighbours(settings: SearchSettings) -> tuple[int, ...]:
    """The workloads a search scores, as neighbouring paragraphs per side: paragraphs (0), and documents when asked."""
    return (0, settings.neighbours) if settings.neighbours else (0,)
