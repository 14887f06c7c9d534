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
import torch.nn.functional as F

from toolchain import squad
from toolchain.families import dims_of
from toolchain.length import VARIANTS, LengthConfig
from toolchain.model import drop_and_restore, load_qa_model
from toolchain.search import search_examples


def span_logits(model, features: squad.Features, config: LengthConfig | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(start, end) logits of every window, each run alone on its real tokens."""
    out = []
    with torch.inference_mode():
        for row in range(len(features)):
            inputs = features.model_inputs(np.array([row]))
            real = int(inputs["attention_mask"].sum())
            batch = {k: torch.from_numpy(v[:, :real]) for k, v in inputs.items()}
            s, e = drop_and_restore(model, **batch, config=config)
            out.append((s[0].float(), e[0].float()))
    return out


def kl(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return float(F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="sum"))


def gap(teacher_logits, student_logits, features: squad.Features) -> dict[str, float]:
    """Mean KL per window kind, and on answer windows the share where the student's argmax span is the gold one."""
    answer = features.start_positions > 0
    kls = np.array([(kl(s[0], t[0]) + kl(s[1], t[1])) / 2 for s, t in zip(student_logits, teacher_logits)])

    def hits(logits) -> np.ndarray:
        return np.array([int(s.argmax()) == int(gs) and int(e.argmax()) == int(ge)
                         for (s, e), gs, ge in zip(logits, features.start_positions, features.end_positions)])

    teacher_hits, student_hits = hits(teacher_logits)[answer], hits(student_logits)[answer]
    return {"windows": int(len(features)), "answer windows": int(answer.sum()),
            "KL answer windows": round(float(kls[answer].mean()), 3),
            "KL answer-less windows": round(float(kls[~answer].mean()), 3),
            "teacher gold span": round(float(teacher_hits.mean()), 3),
            "sub-model gold span": round(float(student_hits.mean()), 3)}


@click.command()
@click.option("--teacher", required=True, type=click.Path(exists=True, file_okay=False), help="Its full model is the reference.")
@click.option("--model", "models", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A model whose sub-model is compared (repeat).")
@click.option("--config", required=True, help="The sub-model's length configuration.")
@click.option("--variant", type=click.Choice(VARIANTS), default="question", show_default=True)
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1), help="Held-out train questions.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the rows as JSON here.")
def main(teacher, models, config, variant, limit, out) -> None:
    reference, tokenizer = load_qa_model(teacher)
    examples = search_examples(limit, neighbours=squad.DOCUMENT_NEIGHBOURS)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE,
                               with_targets=True)
    teacher_logits = span_logits(reference, features, None)
    rows = []
    for folder in models:
        model, _ = load_qa_model(folder)
        sub = LengthConfig.parse(config, dims_of(model).layers, variant=variant)
        row = {"model": folder, "config": config, **gap(teacher_logits, span_logits(model, features, sub), features)}
        rows.append(row)
        click.echo("  ".join(f"{k} {v}" for k, v in row.items()))
    if out:
        Path(out).write_text(json.dumps({"teacher": teacher, "variant": variant, "limit": limit,
                                         "neighbours": squad.DOCUMENT_NEIGHBOURS, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
