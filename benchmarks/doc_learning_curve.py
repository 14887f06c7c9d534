"""Learning curve of a document LengthDrop stage: F1 of a few configurations against training steps.

Reads the `step-N` folders `qtool train --snapshot-every N --snapshot-dir DIR` wrote (and the base model as
step 0), and scores each with PyTorch FP32 on SQuAD dev as documents (`--neighbours`, unpadded) and on the
questions' own paragraphs. A report, not a selection: nothing here picks a configuration.

    python benchmarks/doc_learning_curve.py --base ../shared/models/minilm-squad-lat-doc --snapshots runs/curve --final runs/lat-doc2 \
        --config full --config 348,287,234,202,170,149 --limit 100 --out runs/curve.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from toolchain.verify import evaluate_model


def snapshot_folders(base: str, snapshots: str, final: str | None) -> list[tuple[int, Path]]:
    steps = [(int(m.group(1)), p) for p in Path(snapshots).iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))]
    if final is not None:  # the finished model, at the step its training record says
        step = json.loads((Path(final) / "qtool_train.json").read_text())["steps"]
        steps = [s for s in steps if s[0] != step] + [(step, Path(final))]
    return [(0, Path(base)), *sorted(steps)]


@click.command()
@click.option("--base", required=True, type=click.Path(exists=True, file_okay=False), help="The model the stage started from (step 0).")
@click.option("--snapshots", required=True, type=click.Path(exists=True, file_okay=False), help="The stage's --snapshot-dir.")
@click.option("--final", type=click.Path(exists=True, file_okay=False), default=None, help="The stage's finished model (--out).")
@click.option("--config", "configs", multiple=True, default=("full",), show_default=True, help="Length configuration (repeat).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1), help="SQuAD dev questions.")
@click.option("--neighbours", default=2, show_default=True, type=click.IntRange(min=1), help="Document workload.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the curve as JSON here.")
def main(base, snapshots, final, configs, limit, neighbours, out) -> None:
    curve = []
    for step, folder in snapshot_folders(base, snapshots, final):
        row = {"step": step, "model": str(folder)}
        for workload, n in (("paragraphs", 0), ("documents", neighbours)):
            for result in evaluate_model(folder, configs, limit=limit, protocol="unpadded", neighbours=n,
                                         show_progress=False):
                row[f"{workload} {result['config']}"] = round(result["f1"], 2)
        curve.append(row)
        click.echo("  ".join(f"{k} {v}" for k, v in row.items() if k != "model"))
    if out:
        Path(out).write_text(json.dumps({"limit": limit, "neighbours": neighbours, "curve": curve}, indent=2))


if __name__ == "__main__":
    main()
