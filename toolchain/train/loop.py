"""The training loop: one optimizer step per batch (this process's share of it under torchrun)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed
from ..data import squad

from .distributed import Ranks
from ..model.families import dims_of
from ..artifact.output import CHECKPOINT_DIR
from ..core.settings import TrainSettings
from .args import check_outputs, resolved_args
from .base import freeze, frozen_teacher, load_base, training_features
from .checkpoints import optimizer_and_state, save_model, training_record, write_progress
from .lengthdrop import lr_factor, step_loss, batch_width, epoch_batches


def _optimizer_step(args: TrainSettings, model: torch.nn.Module, optimizer: torch.optim.Optimizer, feats: squad.Features,
                    rows: np.ndarray, width: int, num_layers: int, rng: random.Random, autocast, *, lr: float,
                    teacher: torch.nn.Module | None = None, ranks: Ranks = Ranks()) -> float:
    """One optimizer step on one batch of windows (cut to `width`; this process's share of it under torchrun);
    returns the step's loss."""
    device = args.device
    rows = distributed.shard(rows, ranks)
    batch = {k: torch.from_numpy(v[:, :width]).to(device) for k, v in feats.model_inputs(rows).items()}
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = step_loss(args, model, batch, torch.from_numpy(feats.start_positions[rows]).to(device),
                       torch.from_numpy(feats.end_positions[rows]).to(device), num_layers, width, rng, autocast,
                       teacher=teacher)
    learning = [p for p in model.parameters() if p.requires_grad]
    distributed.average_gradients(learning, ranks)
    torch.nn.utils.clip_grad_norm_(learning, 1.0)
    optimizer.step()
    return distributed.mean_over_ranks(total, ranks, device)


def train(args: TrainSettings, progress: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Fine-tune and write a QA model folder to `args.out`; returns the run's statistics.
    Under torchrun, each process trains on its share of every batch and rank 0 writes (toolchain/distributed.py)."""
    from tqdm.auto import tqdm

    ranks = distributed.from_environment()
    args = resolved_args(args, ranks)
    device = args.device
    out = Path(args.out)
    check_outputs(args)
    distributed.barrier(ranks)  # every rank has checked --out before rank 0 writes to it
    ckpt_dir = out / CHECKPOINT_DIR
    model, tokenizer = load_base(args)
    model.to(device)  # before the optimizer, so a resumed optimizer state lands on the same device
    num_layers = dims_of(model).layers
    teacher = frozen_teacher(args, model)  # the base, before a resumed checkpoint replaces the weights
    freeze(model, args.freeze_layers)
    feats = training_features(args, tokenizer, num_layers)
    n, lengths, max_width = len(feats), feats.attention_mask.sum(1), feats.input_ids.shape[1]
    steps_per_epoch = max(1, n // args.batch_size)
    max_steps = args.max_steps or max(1, int(args.epochs * steps_per_epoch))
    optimizer, state = optimizer_and_state(args, model, ckpt_dir, resume)
    distributed.same_start(model.parameters(), ranks)
    if ranks.distributed:  # each rank its own dropout masks (one process draws them for the whole batch)
        torch.manual_seed(args.seed + ranks.rank + 1)
    if ranks.writer:
        out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(args.seed + state["step"])
    model.train()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)
    start_time, last_save = time.monotonic() - state["elapsed"], time.monotonic()
    bar = tqdm(total=max_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True,
               disable=not ranks.writer)
    batches: tuple[int, list[np.ndarray]] = (-1, [])
    while state["step"] < max_steps:
        epoch, index = divmod(state["step"], steps_per_epoch)
        if batches[0] != epoch:
            batches = (epoch, epoch_batches(lengths, args.batch_size, args.seed, epoch))
        rows = batches[1][index]
        width = batch_width(int(lengths[rows].max()), max_width)
        progress_share = state["step"] / max_steps
        if args.time_budget:
            elapsed = distributed.largest_over_ranks(time.monotonic() - start_time, ranks, device)
            progress_share = max(progress_share, elapsed / args.time_budget)
        total = _optimizer_step(args, model, optimizer, feats, rows, width, num_layers, rng, autocast,
                                lr=args.lr * lr_factor(progress_share, args.warmup), teacher=teacher, ranks=ranks)

        state["step"] += 1
        state["examples"] += len(rows)
        state["elapsed"] = time.monotonic() - start_time
        state["loss_ema"] = total if state["loss_ema"] is None else 0.98 * state["loss_ema"] + 0.02 * total
        bar.update(1)
        bar.set_postfix(loss=f"{state['loss_ema']:.3f}", ex_s=f"{state['examples'] / max(state['elapsed'], 1e-9):.1f}")
        last_save = write_progress(args, model, optimizer, tokenizer, state, n, ranks, ckpt_dir, last_save)
        if progress is not None:
            progress({**state, "width": width})
        if args.time_budget and distributed.largest_over_ranks(state["elapsed"], ranks, device) >= args.time_budget:
            break
    bar.close()
    record = training_record(args, state, n, ranks)
    if ranks.writer:
        save_model(out, model, tokenizer, args, record)
    distributed.barrier(ranks)
    distributed.stop(ranks)
    return record

