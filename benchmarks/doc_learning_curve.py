"""Learning curve of a document LengthDrop stage: F1 of a few configurations against training steps.

Reads the `step-N` folders `qtool train --snapshot-every N --snapshot-dir DIR` wrote (and the base model as
step 0), and scores each with PyTorch FP32, unpadded windows, on the questions' own paragraphs and as documents
(two neighbouring paragraphs each side). `--split heldout-train` scores the search's held-out SQuAD train
questions (where a stage may be chosen; the questions the stage trained on, read from `--final`'s record, are left
out), `--split dev` the first dev questions (what is reported). Every snapshot
runs under one variant (`--variant`, default: what the stage trained), so step 0 is scored as the later steps.

    python benchmarks/doc_learning_curve.py --base ../shared/models/minilm-squad-lat-doc --snapshots runs/curve \
        --final runs/doc-frozen --config full --config 315,251,242,159,142,33 --split dev --limit 200 --out curve.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from toolchain.data import squad
from toolchain.model.families import dims_of
from toolchain.core.length import VARIANTS, LengthConfig
from toolchain.model.drop_and_restore import load_qa_model, trained_variant
from toolchain.graph.runtime import Protocol, predict_torch, score
from toolchain.data.splits import search_examples, trained_questions

SPLITS = ("dev", "heldout-train")


def snapshot_folders(base: str, snapshots: str, final: str | None) -> list[tuple[int, Path]]:
    steps = [(int(m.group(1)), p) for p in Path(snapshots).iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))]
    if final is not None:  # the finished model, at the step its training record says
        step = json.loads((Path(final) / "qtool_train.json").read_text())["steps"]
        steps = [s for s in steps if s[0] != step] + [(step, Path(final))]
    return [(0, Path(base)), *sorted(steps)]


def workloads(split: str, limit: int, tokenizer, exclude: frozenset[str] = frozenset()) -> dict[str, tuple[list, squad.Features]]:
    """{"paragraphs" | "documents": (examples, windows)}: the same questions twice, featurized once for every snapshot;
    held-out train questions leave out `exclude` (what the stage trained on)."""
    out = {}
    for name, neighbours in (("paragraphs", 0), ("documents", squad.DOCUMENT_NEIGHBOURS)):
        if split == "dev":
            examples = squad.load_squad("dev", limit=limit, neighbours=neighbours)
        else:
            examples = search_examples(limit, neighbours=neighbours, exclude=exclude)
        out[name] = (examples, squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH,
                                               doc_stride=squad.DOC_STRIDE))
    return out


def curve_row(folder: Path, configs: tuple[str, ...], variant: str, data: dict) -> dict[str, float]:
    """{"<workload> <config>": F1} of one snapshot."""
    model, _ = load_qa_model(folder)
    layers = dims_of(model).layers
    row = {}
    for workload, (examples, features) in data.items():
        for text in configs:
            config = LengthConfig.parse(text, layers, variant=variant)
            predictions = predict_torch(model, features, config, protocol=Protocol.UNPADDED)
            row[f"{workload} {text}"] = round(score(examples, features, predictions)["f1"], 2)
    return row


@click.command()
@click.option("--base", required=True, type=click.Path(exists=True, file_okay=False), help="The model the stage started from (step 0).")
@click.option("--snapshots", required=True, type=click.Path(exists=True, file_okay=False), help="The stage's --snapshot-dir.")
@click.option("--final", type=click.Path(exists=True, file_okay=False), default=None, help="The stage's finished model (--out).")
@click.option("--config", "configs", multiple=True, default=("full",), show_default=True, help="Length configuration (repeat).")
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True,
              help="dev (report) or the search's held-out SQuAD train questions (choose).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="Questions.")
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="Default: the variant the last snapshot trained.")
@click.option("--step", "steps", multiple=True, type=int, help="Score only these steps (repeat; default: every snapshot).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the curve as JSON here.")
def main(base, snapshots, final, configs, split, limit, variant, steps, out) -> None:
    every = snapshot_folders(base, snapshots, final)
    missing = sorted(set(steps) - {step for step, _ in every})
    if missing:
        raise click.UsageError(f"--step {missing}: no such snapshot (have {[step for step, _ in every]})")
    last, tokenizer = load_qa_model(every[-1][1])  # the stage's variant, whichever steps are scored
    variant = variant or str(trained_variant(last))
    exclude = trained_questions(final) if split == "heldout-train" and final else frozenset()
    data = workloads(split, limit, tokenizer, exclude)
    click.echo(f"{split}: {limit} questions ({len(exclude)} the stage trained on left out); windows: "
               + ", ".join(f"{name} {len(features)}" for name, (_, features) in data.items()) + f"; variant {variant}")
    curve = []
    for step, folder in every:
        if steps and step not in steps:
            continue
        row = {"step": step, "model": str(folder), **curve_row(folder, tuple(configs), variant, data)}
        curve.append(row)
        click.echo("  ".join(f"{k} {v}" for k, v in row.items() if k != "model"))
    if out:
        record = {"split": split, "limit": limit, "neighbours": squad.DOCUMENT_NEIGHBOURS, "variant": variant,
                  "trained_on_left_out": len(exclude), "curve": curve}
        Path(out).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
