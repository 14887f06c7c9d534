"""How often the float32 ranking (the `match` bonus rounded attention to 0.002) and the float64 one (exact tiers,
stable ties) disagree, and what it does to F1: PyTorch FP32, unpadded, the same dev questions, paired.

    python benchmarks/ranking_ties.py --model ../shared/models/minilm-squad-lat-doc-match \
        --config 212,194,189,96,81,51 --questions 300 --neighbours 2 --out results/ranking-ties/documents-300.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from toolchain.model.drop_and_restore import drop_and_restore as drop
from toolchain.data import squad
from toolchain.core.length import LengthConfig
from toolchain.graph.runtime import Protocol, kept_agreement, predict_torch
from toolchain.search.scoring import paired_interval


def _float32_ranking():
    """The ranking before float64: scores in float32 and torch.topk (ties in whatever order topk returns)."""
    saved = drop.RANK_DTYPE, drop._ranked
    drop.RANK_DTYPE = torch.float32
    drop._ranked = lambda score: torch.topk(score, score.shape[1], dim=1).indices
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = drop.load_qa_model(args.model)
    config = LengthConfig.parse(args.config, 6, 384, "cap", drop.trained_variant(model))
    examples = squad.load_squad("dev", limit=args.questions, offset=args.offset, neighbours=args.neighbours)
    features = squad.featurize(examples, tokenizer, max_length=384, doc_stride=128)
    new = predict_torch(model, features, config, protocol=Protocol.UNPADDED)
    saved = _float32_ranking()
    try:
        old = predict_torch(model, features, config, protocol=Protocol.UNPADDED)
    finally:
        drop.RANK_DTYPE, drop._ranked = saved
    scores = {}
    for name, p in (("float64", new), ("float32", old)):
        answers = squad.postprocess(examples, features, p.start_logits, p.end_logits)
        scores[name] = squad.question_scores(answers, examples)[1]
    mean, low, high = paired_interval(scores["float64"], scores["float32"])
    differ = sum(1 for row in range(len(features))
                 if any(set(a[row]) != set(b[row]) for a, b in zip(new.kept, old.kept)))
    result = {"model": args.model, "config": args.config, "variant": config.variant, "questions": args.questions,
              "offset": args.offset, "neighbours": args.neighbours, "windows": len(features),
              "windows_whose_kept_tokens_differ": differ,
              "kept_agreement": kept_agreement(new, old, features.attention_mask),
              "f1": {k: 100.0 * float(v.mean()) for k, v in scores.items()},
              "f1_difference_float64_minus_float32": {"mean": mean, "interval_95": [low, high]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
