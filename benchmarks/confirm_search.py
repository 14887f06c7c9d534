"""Re-score a finished search's confirmation candidates on another slice of held-out SQuAD train.

`qtool search --confirm-questions N` confirms once, on N questions; this re-runs that step alone on more (or other)
questions from the search's JSON, so a recommendation decided by a fraction of an F1 point can be checked without
searching again. It prints each candidate's F1 and its paired difference from the full model (and from a reference
graph, the bar when given) with a 95 % bootstrap interval, and writes the confirmation as JSON.

    python benchmarks/confirm_search.py runs/search-trained.json --model runs/doc-match --questions 1200 \\
        --out results/search-bar/search-confirm-1200.json
    python benchmarks/confirm_search.py runs/search-trained.json --model runs/doc-match --questions 1200 \\
        --configs "315,251,242,159,142,33@224;316,284,280,236,135,112@256" --reference-graph runs/std/std-int8-o2-dynamic \\
        --out results/search-bar/search-confirm-1200-vs-standard.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from toolchain.search.recommend import confirm, confirmation_candidates
from toolchain.core.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", type=Path, help="a `qtool search --out` JSON")
    parser.add_argument("--model", required=True, help="the model folder the search ran on")
    parser.add_argument("--questions", type=int, required=True, help="train questions to confirm on")
    parser.add_argument("--neighbours", type=int, default=SearchSettings.neighbours,
                        help="the search's --neighbours (the JSON names its workloads, not the number)")
    parser.add_argument("--reference-graph", default=None,
                        help="an artifact (e.g. the standard recipe's INT8 graph) scored on the same questions: the bar")
    parser.add_argument("--configs", default=None,
                        help="confirm only these of the search's rows ('full' always), separated by ';'; "
                             "CONFIG@N routes it to the full model up to N tokens, as `qtool route` ships it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    found = json.loads(args.search.read_text())
    settings = replace(SearchSettings(), questions=found["questions"], offset=found["offset"],
                       neighbours=args.neighbours, variant=found["variant"])
    candidates = confirmation_candidates(found["evaluated"])
    if args.configs:  # 'CONFIG' or 'CONFIG@N': that search row, routed to the full model up to N tokens
        rows = {row["config"]: row for row in found["evaluated"]}
        candidates = [rows["full"]]
        for item in args.configs.split(";"):
            config, _, full_up_to = item.partition("@")
            candidates.append({**rows[config], "full_up_to": int(full_up_to or 0)})
    print(f"confirming {len(candidates)} configurations of {args.search} on {args.questions} other train questions")
    confirmed = confirm(args.model, candidates, settings, questions=args.questions, reference_graph=args.reference_graph)
    print(f"recommended: {confirmed['recommended']['config'] if confirmed['recommended'] else None}")
    args.out.write_text(json.dumps({"search": str(args.search), **confirmed}, indent=1))


if __name__ == "__main__":
    main()
