"""Re-score a finished search's confirmation candidates on another slice of held-out SQuAD train.

`qtool search --confirm-questions N` confirms once, on N questions; this re-runs that step alone on more (or other)
questions from the search's JSON, so a recommendation decided by a fraction of an F1 point can be checked without
searching again. It prints each candidate's F1 and its paired difference from the full model with a 95 % bootstrap
interval, and writes the confirmation as JSON.

    python benchmarks/confirm_search.py runs/search-trained.json --model runs/doc-match --questions 1200 \\
        --out docs/search-confirm-1200.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from toolchain.search import confirm, confirmation_candidates
from toolchain.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", type=Path, help="a `qtool search --out` JSON")
    parser.add_argument("--model", required=True, help="the model folder the search ran on")
    parser.add_argument("--questions", type=int, required=True, help="train questions to confirm on")
    parser.add_argument("--neighbours", type=int, default=SearchSettings.neighbours,
                        help="the search's --neighbours (the JSON names its workloads, not the number)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    found = json.loads(args.search.read_text())
    settings = replace(SearchSettings(), questions=found["questions"], offset=found["offset"],
                       neighbours=args.neighbours, variant=found["variant"])
    candidates = confirmation_candidates(found["evaluated"])
    print(f"confirming {len(candidates)} configurations of {args.search} on {args.questions} other train questions")
    confirmed = confirm(args.model, candidates, settings, questions=args.questions)
    print(f"recommended: {confirmed['recommended']['config'] if confirmed['recommended'] else None}")
    args.out.write_text(json.dumps({"search": str(args.search), **confirmed}, indent=1))


if __name__ == "__main__":
    main()
