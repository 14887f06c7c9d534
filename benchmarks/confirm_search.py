"""Confirm a finished search on other held-out train questions: `qtool search --confirm-questions`, applied to the
rows of a search result written earlier (`--out`), optionally with extra candidate configurations.

    python benchmarks/confirm_search.py docs/search-mix-match.json --model ../shared/models/minilm-squad-lat-doc \\
        --questions 400 --candidate 315,251,242,159,142,33 --latency-model docs/latency-model-match-vnni.json \\
        --out docs/search-mix-match-confirmed.json

The slice is the one `qtool search --confirm-questions` uses: the `--questions` held-out train questions right
before the search's own. An extra candidate's cost comes from the same latency model the search used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.latency import LatencyModel
from toolchain.length import LengthConfig
from toolchain.search import confirm, confirmation_candidates, scoring_workloads
from toolchain.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result", help="a `qtool search --out` file")
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--candidate", action="append", default=[], help="an extra configuration to confirm")
    parser.add_argument("--latency-model", help="the search's latency model (costs of extra candidates)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    result = json.loads(Path(args.result).read_text())
    neighbours = int(result["workloads"][-1].split("+ ")[1].split(" ")[0]) if len(result["workloads"]) > 1 else 0
    settings = SearchSettings(questions=result["questions"], offset=result["offset"], neighbours=neighbours,
                              variant=result["variant"], length_rule=result["objective"]["maximize"].split("length rule ")[1].split(",")[0])
    candidates = confirmation_candidates(result["evaluated"])
    if args.candidate:
        timing = LatencyModel.load(args.latency_model)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        search_slice = scoring_workloads(tokenizer, settings, questions=settings.questions, offset=settings.offset)
        lengths = [f.attention_mask.sum(1) for _, f in search_slice.values()]
        import numpy as np

        every = np.concatenate(lengths)
        for text in args.candidate:
            config = LengthConfig.parse(text, timing.layers, settings.seq_len, settings.length_rule, settings.variant)
            candidates.append({"config": config.label, "cost": timing.cost(config, every), "extra_candidate": True})
    confirmed = confirm(args.model, candidates, settings, questions=args.questions,
                        offset=settings.offset + settings.questions)
    Path(args.out).write_text(json.dumps({"search": args.result, **confirmed}, indent=2))
    best = confirmed["recommended"]
    print(f"recommended after confirmation: --config {best['config']}  cost {best['cost']:.3f}")


if __name__ == "__main__":
    main()
