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

from qtool_runtime.contract import Variant
from toolchain.model.drop_and_restore import drop_and_restore as drop_model
from toolchain.data import squad
from toolchain.model.families import dims_of
from toolchain.core.length import LengthConfig
from toolchain.graph.runtime import Protocol, predict_torch, score
from toolchain.data.splits import search_examples

CONFIGS = ("341,334,332,292,280,254", "315,251,242,159,142,33", "360,330,300,270,240,210", "320,280,240,200,160,120")
VARIANTS = (Variant.QTOOL, Variant.QUESTION, Variant.MATCH)  # lat needs padded windows


def document_f1(model_dir: str, *, questions: int, configs: tuple[str, ...] = CONFIGS,
                variants: tuple[str, ...] = VARIANTS, neighbours: int = squad.DOCUMENT_NEIGHBOURS) -> dict:
    """{"full": F1, config: {variant: F1}} on `questions` held-out train questions as documents."""
    model, tokenizer = drop_model.load_qa_model(model_dir)
    examples = search_examples(questions, neighbours=neighbours)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)

    def f1(config: LengthConfig | None) -> float:
        return score(examples, features, predict_torch(model, features, config, protocol=Protocol.UNPADDED))["f1"]

    result: dict = {"questions": questions, "neighbours": neighbours, "windows": len(features),
                    "match": {"width": drop_model.MATCH_WIDTH, "max_repeats": drop_model.MATCH_MAX_REPEATS}, "full": f1(None)}
    print(f"full: F1 {result['full']:.2f} ({len(features)} windows)", flush=True)
    for text in configs:
        result[text] = {}
        for variant in variants:
            result[text][variant] = f1(LengthConfig.parse(text, dims_of(model).layers, variant=variant))
            print(f"{text:<26} {variant:<9} F1 {result[text][variant]:.2f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--config", action="append", dest="configs", help="repeatable; default: four configurations")
    parser.add_argument("--variant", action="append", dest="variants", choices=VARIANTS, help="repeatable; default: all")
    parser.add_argument("--neighbours", type=int, default=squad.DOCUMENT_NEIGHBOURS, help="0: the questions' own paragraphs")
    parser.add_argument("--match-width", type=int, default=drop_model.MATCH_WIDTH)
    parser.add_argument("--match-repeats", type=int, default=drop_model.MATCH_MAX_REPEATS)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    drop_model.MATCH_WIDTH, drop_model.MATCH_MAX_REPEATS = args.match_width, args.match_repeats
    result = document_f1(args.model, questions=args.questions, configs=tuple(args.configs or CONFIGS),
                         variants=tuple(args.variants or VARIANTS), neighbours=args.neighbours)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
