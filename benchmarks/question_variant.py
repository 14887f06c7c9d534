"""Document F1 of Drop-and-Restore variants on held-out SQuAD train: which ranking keeps the answer?

Every configuration is scored with the PyTorch model (FP32, unpadded windows, cap rule) under each variant, on the
search's held-out train questions widened into documents (two neighbouring paragraphs each side; `--neighbours 0`:
their own paragraphs), never dev. `--match-width` and `--match-repeats` try other constants for the `match`
variant (where its defaults were chosen).

    python benchmarks/question_variant.py --model ../shared/models/minilm-squad-lat-doc --questions 200
    python benchmarks/question_variant.py --model ../shared/models/minilm-squad-lat-doc --questions 300 \
        --variant match --config 315,251,242,159,142,33 --match-width 20 --match-repeats 3
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from qtool_runtime.contract import Variant
from toolchain.model import drop_and_restore as drop_model
from toolchain.data import squad
from toolchain.model.families import dims_of
from toolchain.core.length import LengthConfig
from toolchain.data.overlap import f1_by_third, overlap_thirds
from toolchain.graph.runtime import Protocol, predict_torch
from toolchain.data.splits import search_examples
from toolchain.search.scoring import paired_interval

CONFIGS = ("341,334,332,292,280,254", "315,251,242,159,142,33", "360,330,300,270,240,210", "320,280,240,200,160,120")
VARIANTS = (Variant.QTOOL, Variant.MATCH)  # lat needs padded windows


def document_f1(model_dir: str, *, questions: int, configs: tuple[str, ...] = CONFIGS,
                variants: tuple[str, ...] = VARIANTS, neighbours: int = squad.DOCUMENT_NEIGHBOURS,
                offset: int = 0) -> dict:
    """{"full": F1, config: {variant: F1}} on `questions` held-out train questions as documents; with two variants,
    also the second minus the first per configuration ("paired": mean, 95 % bootstrap interval over questions) and F1
    per overlap third ("thirds")."""
    model, tokenizer = drop_model.load_qa_model(model_dir)
    examples = search_examples(questions, offset=offset, neighbours=neighbours)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)
    thirds = overlap_thirds(examples)[0]

    def per_question(config: LengthConfig | None) -> np.ndarray:
        preds = predict_torch(model, features, config, protocol=Protocol.UNPADDED)
        answers = squad.postprocess(examples, features, preds.start_logits, preds.end_logits)
        return squad.question_scores(answers, examples)[1]

    full = per_question(None)
    result: dict = {"questions": questions, "offset": offset, "neighbours": neighbours, "windows": len(features),
                    "match": {"width": drop_model.MATCH_WIDTH, "max_repeats": drop_model.MATCH_MAX_REPEATS},
                    "full": 100.0 * float(full.mean()), "thirds": {"full": f1_by_third(full, thirds)}, "paired": {}}
    print(f"full: F1 {result['full']:.2f} ({len(features)} windows)", flush=True)
    for text in configs:
        result[text], scores = {}, {}
        for variant in variants:
            scores[variant] = per_question(LengthConfig.parse(text, dims_of(model).layers, variant=variant))
            result[text][variant] = 100.0 * float(scores[variant].mean())
            result["thirds"][f"{text} {variant}"] = f1_by_third(scores[variant], thirds)
            print(f"{text:<26} {variant:<9} F1 {result[text][variant]:.2f}  thirds "
                  f"{result['thirds'][f'{text} {variant}']}", flush=True)
        if len(variants) == 2:
            result["paired"][text] = paired_interval(scores[variants[1]], scores[variants[0]])
            print(f"{text:<26} {variants[1]} - {variants[0]}: {result['paired'][text][0]:+.2f} "
                  f"[{result['paired'][text][1]:+.2f}, {result['paired'][text][2]:+.2f}]", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--config", action="append", dest="configs", help="repeatable; default: four configurations")
    parser.add_argument("--variant", action="append", dest="variants", choices=VARIANTS, help="repeatable; default: all")
    parser.add_argument("--offset", type=int, default=0, help="shift the spread by this many pool questions (another sample)")
    parser.add_argument("--neighbours", type=int, default=squad.DOCUMENT_NEIGHBOURS, help="0: the questions' own paragraphs")
    parser.add_argument("--match-width", type=int, default=drop_model.MATCH_WIDTH)
    parser.add_argument("--match-repeats", type=int, default=drop_model.MATCH_MAX_REPEATS)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    drop_model.MATCH_WIDTH, drop_model.MATCH_MAX_REPEATS = args.match_width, args.match_repeats
    result = document_f1(args.model, questions=args.questions, configs=tuple(args.configs or CONFIGS),
                         variants=tuple(args.variants or VARIANTS), neighbours=args.neighbours, offset=args.offset)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
