"""NSGA-II vs LAT's evolutionary search at an equal number of evaluations, on the deployment protocol.

Both samplers search the same space on the same held-out SQuAD train slice (unpadded windows, cap rule,
cost = encoder MACs at real lengths / plain model). The front each finds is scored by its hypervolume
(area dominated between the front and the reference point: F1 0, MACs 1.0); larger is better.

    python benchmarks/search_compare.py --model ../shared/models/minilm-squad-lat --trials 48 --questions 300
"""

from __future__ import annotations

import argparse
import json

from toolchain.search.run import search_configs
from toolchain.core.settings import SearchSettings


def hypervolume(front: list[dict], ref_cost: float = 1.0, ref_f1: float = 0.0) -> float:
    """2-D hypervolume of (cost down, F1 up) points against (ref_cost, ref_f1)."""
    points = sorted((r["cost"], r["f1"]) for r in front if r["cost"] <= ref_cost)
    area, best_f1 = 0.0, ref_f1
    for i, (cost, f1) in enumerate(points):
        best_f1 = max(best_f1, f1)
        next_cost = points[i + 1][0] if i + 1 < len(points) else ref_cost
        area += (next_cost - cost) * (best_f1 - ref_f1)
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--population", type=int, default=12)
    parser.add_argument("--min-ratio", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {}
    for sampler in ("nsga2", "evolution"):
        settings = SearchSettings(trials=args.trials, questions=args.questions, min_ratio=args.min_ratio,
                                  sampler=sampler, population=args.population, seed=args.seed)
        result = search_configs(args.model, settings, log=lambda _: None)
        result["hypervolume"] = hypervolume(result["pareto"])
        results[sampler] = result
        print(f"{sampler:<10} trials {result['trials']}  front {len(result['pareto'])}  hypervolume {result['hypervolume']:.3f}")
        for row in result["pareto"]:
            print(f"    {row['config']:<28} MACs {row['macs_unpadded']:.3f}  F1 {row['f1']:6.2f}")
    print(f"space: {results['nsga2']['space']}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
