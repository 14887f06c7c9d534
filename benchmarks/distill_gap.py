"""Where a distilled sub-model still differs from its teacher: answer windows against answer-less ones.

A document question spans several windows, most without the answer. LengthDrop distillation (KL between a
sub-model's span distributions and the teacher's, per window) weighs every window alike, so a falling training
loss can come from the answer-less windows alone. This scores, on held-out SQuAD train questions as documents
(FP32 PyTorch, one unpadded window at a time), each model's sub-model against the teacher's full model: the mean
KL on answer windows and on answer-less ones, and how often the sub-model's best start and best end both land on
the gold span where the teacher's do (answer windows).

    python benchmarks/distill_gap.py --teacher ../shared/models/minilm-squad-lat-doc \
        --model ../shared/models/minilm-squad-lat-doc --model runs/doc-frozen \
        --config 315,251,242,159,142,33 --variant question --limit 200 --out gap.json
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from toolchain.data import squad
from toolchain.model.families import dims_of
from toolchain.core.length import VARIANTS, LengthConfig
from toolchain.model.drop_and_restore import load_qa_model
from toolchain.graph.runtime import Predictions, Protocol, predict_torch
from toolchain.data.splits import search_examples
from toolchain.train.lengthdrop import _distill


def window_kl(student: Predictions, teacher: Predictions, features: squad.Features) -> np.ndarray:
    """Per window, the training loss of a LengthDrop step (start and end KL averaged) over its real tokens."""
    mask = torch.from_numpy(features.attention_mask)
    s_start, s_end, t_start, t_end = (torch.from_numpy(a) for a in (student.start_logits, student.end_logits,
                                                                   teacher.start_logits, teacher.end_logits))
    return np.array([float((_distill(s_start[[i]], t_start[[i]], mask[[i]])
                            + _distill(s_end[[i]], t_end[[i]], mask[[i]])) / 2) for i in range(len(features))])


def gap(teacher: Predictions, student: Predictions, features: squad.Features) -> dict[str, float]:
    """Mean KL per window kind, and on answer windows the share where the student's argmax span is the gold one."""
    answer = features.start_positions > 0
    kls = window_kl(student, teacher, features)

    def hits(p: Predictions) -> np.ndarray:
        return ((p.start_logits.argmax(1) == features.start_positions)
                & (p.end_logits.argmax(1) == features.end_positions))

    return {"windows": int(len(features)), "answer windows": int(answer.sum()),
            "KL answer windows": round(float(kls[answer].mean()), 3),
            "KL answer-less windows": round(float(kls[~answer].mean()), 3),
            "teacher gold span": round(float(hits(teacher)[answer].mean()), 3),
            "sub-model gold span": round(float(hits(student)[answer].mean()), 3)}


@click.command()
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False), help="Its full model is the reference.")
@click.option("--model", "models", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A model whose sub-model is compared (repeat).")
@click.option("--config", required=True, help="The sub-model's length configuration.")
@click.option("--variant", type=click.Choice(VARIANTS), default="match", show_default=True)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1), help="Held-out train questions.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON here.")
def main(teacher, models, config, variant, limit, out) -> None:
    reference, tokenizer = load_qa_model(teacher)
    examples = search_examples(limit, neighbours=squad.DOCUMENT_NEIGHBOURS)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE,
                               with_targets=True)
    teacher_logits = predict_torch(reference, features, protocol=Protocol.UNPADDED)
    rows = []
    for folder in models:
        model, _ = load_qa_model(folder)
        sub = LengthConfig.parse(config, dims_of(model).layers, variant=variant)
        row = {"model": folder, "config": config, **gap(teacher_logits, predict_torch(model, features, sub, protocol=Protocol.UNPADDED), features)}
        rows.append(row)
        click.echo("  ".join(f"{k} {v}" for k, v in row.items()))
    if out:
        Path(out).write_text(json.dumps({"teacher": teacher, "variant": variant, "limit": limit,
                                         "neighbours": squad.DOCUMENT_NEIGHBOURS, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
