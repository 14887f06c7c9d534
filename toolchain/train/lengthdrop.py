"""LengthDrop: the sandwich of sub-models a step trains, its batches and widths, and its distillation loss."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F


from ..core.length import DEFAULT_VARIANT, LengthRule
from ..model.drop_and_restore import LengthConfig, drop_and_restore
from ..core.settings import TrainSettings


# Batches are padded to a multiple of this many tokens. CPU kernels (oneDNN) build and cache a primitive per
# input shape; with one width per batch a run sees hundreds of shapes and resident memory grows without bound.
WIDTH_MULTIPLE = 32


def smallest_config(num_layers: int, seq_len: int, ratio: float, variant: str = DEFAULT_VARIANT) -> LengthConfig:
    """Every layer drops the largest allowed share: the sandwich's lower bound."""
    keep, n = [], seq_len
    for _ in range(num_layers):
        n = max(1, math.ceil(n * (1.0 - ratio)))
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, variant=variant)


def random_config(num_layers: int, seq_len: int, ratio: float, rng: random.Random,
                  variant: str = DEFAULT_VARIANT) -> LengthConfig:
    """Each layer keeps a uniform count between (1 - ratio) and all of what the previous layer kept."""
    keep, n = [], seq_len
    for _ in range(num_layers):
        n = rng.randint(max(1, math.ceil(n * (1.0 - ratio))), n)
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, variant=variant)


def sandwich(args: TrainSettings, num_layers: int, width: int, rng: random.Random) -> list[tuple[LengthConfig, tuple[int, ...]]]:
    """The sub-models of one LengthDrop step: the smallest, then `num_sandwich` random ones (with skipped layers);
    or, with `sandwich_configs`, exactly those.

    Under 'cap' the counts are drawn for max_length, so a short batch keeps min(k_i, tokens in) exactly as a graph
    will on an unpadded window; under the 'ratio' training rule (LAT's) they are drawn for this batch's width, and
    `sandwich_configs` are scaled to it.
    """
    by_width = args.length_rule == LengthRule.RATIO
    if args.sandwich_configs:
        configs = [LengthConfig.parse(text, num_layers, args.max_length, variant=args.variant)
                   for text in args.sandwich_configs]
        return [(scaled_to_width(c, width) if by_width else c, ()) for c in configs]
    budget = width if by_width else args.max_length
    subs = [(smallest_config(num_layers, budget, args.length_drop_ratio, args.variant), ())]
    for _ in range(args.num_sandwich):
        skip = tuple(i for i in range(num_layers) if rng.random() < args.layerdrop)
        subs.append((random_config(num_layers, budget, args.length_drop_ratio, rng, args.variant), skip))
    return subs


def scaled_to_width(config: LengthConfig, width: int) -> LengthConfig:
    """`config` (stated for its seq_len) scaled to a batch of `width` tokens as LAT trains: k -> max(1, ceil(k * width
    / seq_len)), read under cap, so a batch padded to `width` keeps those counts."""
    keep = tuple(None if k is None else max(1, -(-k * width // config.seq_len)) for k in config.keep)
    return LengthConfig(keep, width, variant=config.variant)


def batch_width(longest: int, max_width: int) -> int:
    """Pad a batch whose longest window has `longest` tokens up to a multiple of WIDTH_MULTIPLE (at most `max_width`).

    This bounds the distinct input shapes of a run by max_length / WIDTH_MULTIPLE, so kernel caches stop growing.
    """
    return min(max_width, -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch's batches: length-sorted within pools of 64 batches so a batch pads little, then shuffled.
    A function of (seed, epoch) alone, so a resumed run sees the same batches."""
    n = len(lengths)
    steps = max(1, n // batch_size)
    gen = np.random.default_rng(seed + epoch)
    order = gen.permutation(n)
    pool = 64 * batch_size
    batches = []
    for p in range(0, steps * batch_size, pool):
        chunk = order[p : min(p + pool, steps * batch_size)]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in gen.permutation(len(batches))]


def lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def _distill(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    neg = torch.finfo(torch.float32).min
    s = student.float().masked_fill(mask == 0, neg)
    t = teacher.float().masked_fill(mask == 0, neg)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


def _teacher_logits(model, teacher, batch: dict, starts, ends, autocast) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(start, end) span logits that teach this step's sub-models, and the loss the full model learned from.

    Inplace: the full model runs forward and backward on the span loss and its detached logits teach. Frozen
    teacher: one forward pass without gradients, and the full model learns nothing itself (loss 0)."""
    if teacher is not None:
        with torch.no_grad(), autocast:
            s_full, e_full = drop_and_restore(teacher, **batch)
        return s_full, e_full, 0.0
    with autocast:
        s_full, e_full = drop_and_restore(model, **batch)
        loss = (F.cross_entropy(s_full.float(), starts) + F.cross_entropy(e_full.float(), ends)) / 2
    loss.backward()
    return s_full.detach(), e_full.detach(), loss.item()


def step_loss(args: TrainSettings, model, batch: dict, starts, ends, num_layers: int, width: int,
               rng: random.Random, autocast, teacher=None) -> float:
    """Forward and backward of one step: the full model on the span loss (or the frozen teacher's forward), then
    (LengthDrop) each sub-model distilled from the teacher's logits. Returns the summed loss."""
    teacher_s, teacher_e, total = _teacher_logits(model, teacher, batch, starts, ends, autocast)
    if args.length_drop:
        mask = batch["attention_mask"]
        for config, skip in sandwich(args, num_layers, width, rng):
            with autocast:
                s, e = drop_and_restore(model, **batch, config=config, skip_layers=skip)
                kd = (_distill(s, teacher_s, mask) + _distill(e, teacher_e, mask)) / 2
            kd.backward()
            total += kd.item()
    return total
