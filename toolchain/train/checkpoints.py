"""What a run writes: atomic checkpoints and resumption, snapshots, the model folder and its record."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..core import atomic

from ..core.errors import InputError
from .distributed import Ranks
from ..model.drop_and_restore import VARIANT_ATTRIBUTE
from ..core.settings import TrainSettings


def _save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    """Replace the checkpoint folder atomically: a kill mid-save leaves the previous checkpoint intact."""
    with atomic.staging_dir(path) as tmp:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
             "torch_rng": torch.get_rng_state()},
            tmp / "trainer.pt",
        )


def _what_learns(args: TrainSettings) -> dict:
    """The options that decide which weights learn and from whom: a resumed run must keep them."""
    return {"teacher": str(args.teacher), "freeze_layers": args.freeze_layers}


def _check_resumable(args: TrainSettings, saved_state: dict, ckpt_dir: Path) -> None:
    before = _what_learns(TrainSettings(base=args.base, out=args.out))  # checkpoints from before these options
    saved = {k: saved_state.get(k, default) for k, default in before.items()}
    if saved != _what_learns(args):
        raise InputError(f"--resume: {ckpt_dir} was trained with --teacher {saved['teacher']} --freeze-layers "
                         f"{saved['freeze_layers']}; resume with the same options")


def optimizer_and_state(args: TrainSettings, model, ckpt_dir: Path, resume: bool):
    """AdamW (no decay on biases and norms) and the run state, both from the checkpoint when resuming."""
    learning = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in learning if p.ndim > 1]
    no_decay = [p for p in learning if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    state = {"step": 0, "elapsed": 0.0, "examples": 0, "loss_ema": None, **_what_learns(args)}
    if resume and (ckpt_dir / "trainer.pt").is_file():
        saved = torch.load(ckpt_dir / "trainer.pt", map_location="cpu", weights_only=False)
        _check_resumable(args, saved["state"], ckpt_dir)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {**_what_learns(args), **saved["state"]}
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"])
    return optimizer, state


def write_progress(args: TrainSettings, model, optimizer, tokenizer, state: dict, features: int, ranks: Ranks,
                    ckpt_dir: Path, last_save: float) -> float:
    """Rank 0's checkpoint (every `save_every` seconds) and snapshot (every `snapshot_every` steps); returns when
    the checkpoint was last written."""
    if not ranks.writer:
        return last_save
    if time.monotonic() - last_save > args.save_every:
        _save_checkpoint(ckpt_dir, model, optimizer, state)
        last_save = time.monotonic()
    if args.snapshot_every and state["step"] % args.snapshot_every == 0:
        save_model(Path(args.snapshot_dir) / f"step-{state['step']}", model, tokenizer, args,
                    training_record(args, state, features, ranks))
    return last_save


def training_record(args: TrainSettings, state: dict, features: int, ranks: Ranks) -> dict:
    return {
        "args": asdict(args),
        "features": features,
        "steps": state["step"],
        "examples_seen": state["examples"],
        "epochs_seen": state["examples"] / features,
        "seconds": round(state["elapsed"], 1),
        "examples_per_second": round(state["examples"] / max(state["elapsed"], 1e-9), 2),
        "final_loss_ema": state["loss_ema"],
        "processes": ranks.world,
        "torch": torch.__version__,
    }


def save_model(folder: Path, model, tokenizer, args: TrainSettings, record: dict) -> dict:
    """Write a loadable model folder (weights, tokenizer, training record) in one rename; returns the record.
    Exporting this folder later runs Drop-and-Restore the way it was trained (the variant is recorded)."""
    was_training = model.training
    model.eval()
    setattr(model.config, VARIANT_ATTRIBUTE, args.variant)
    with atomic.staging_dir(folder) as tmp:  # for `out`, the rename also drops the checkpoint it no longer needs
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "qtool_train.json").write_text(json.dumps(record, indent=2))
    model.train(was_training)
    return record
