"""Document F1 of Drop-and-Restore variants on held-out SQuAD train: does keeping the question help?

Every configuration is scored with the PyTorch model (FP32, unpadded windows, cap rule) under each variant, on the
search's held-out train questions widened into documents (two neighbouring paragraphs each side), never dev.

    python benchmarks/question_variant.py --model ../shared/models/minilm-squad-lat-doc --questions 200
"""

from __future__ import annotations

import argparse
import json

from toolchain import squad
from toolchain.families import dims_of
from toolchain.length import LengthConfig
from toolchain.model import load_qa_model
from toolchain.runtime import Protocol, predict_torch, score
from toolchain.search import search_examples

CONFIGS = ("341,334,332,292,280,254", "315,251,242,159,142,33", "360,330,300,270,240,210", "320,280,240,200,160,120")
VARIANTS = ("qtool", "question")


def document_f1(model_dir: str, *, questions: int, configs: tuple[str, ...] = CONFIGS,
                variants: tuple[str, ...] = VARIANTS) -> dict:
    """{"full": F1, config: {variant: F1}} on `questions` held-out train questions as documents."""
    model, tokenizer = load_qa_model(model_dir)
    examples = search_examples(questions, neighbours=squad.DOCUMENT_NEIGHBOURS)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)

    def f1(config: LengthConfig | None) -> float:
        return score(examples, features, predict_torch(model, features, config, protocol=Protocol.UNPADDED))["f1"]

    result: dict = {"questions": questions, "windows": len(features), "full": f1(None)}
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
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    result = document_f1(args.model, questions=args.questions, configs=tuple(args.configs or CONFIGS))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
