"""How well the per-layer latency model predicts real workloads, and what it says about the searched front.

1. Fits the latency model on the INT8 graphs in --graphs (qtool's full and reduced graphs of one model, and
   the standard recipe's std-int8-o2-dynamic), timed on synthetic windows of a few lengths.
2. Times the same graphs and the --held-out graphs (other configurations, never fitted), interleaved, on
   real held-out SQuAD train windows (the search slice, unpadded, batch 1) and compares each graph's
   measured time relative to the standard recipe's with the model's prediction for those windows.
3. With --search (`qtool search --out` or benchmarks/search_compare.py files), re-costs every evaluated
   configuration by predicted latency vs the standard recipe and prints the front under that cost.

    qtool export --model M --config full --config 315,251,242,159,142,33 ... --out graphs/lat-fit
    qtool quantize graphs/lat-fit --no-tune
    qtool standard --model M --out graphs/lat-fit-std
    python benchmarks/latency_model.py --model M --graphs graphs/lat-fit --standard graphs/lat-fit-std \\
        --held-out graphs/front --search results/search-samplers/search-compare-minilm.json --out results/search-real-lengths/latency-minilm.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.artifact.artifact import find_artifacts
from toolchain.evaluate.latency import fit_latency_model
from toolchain.core.length import LengthConfig
from toolchain.model.drop_and_restore import load_qa_model, trained_variant
from toolchain.graph.runtime import onnx_session
from toolchain.data.splits import search_examples
from toolchain.core.pareto import pareto_front
from toolchain.evaluate.verify import time_artifacts


def time_real(folders: list[Path], features: squad.Features, windows: int, rounds: int) -> dict[str, float]:
    """Median ms per window over the first `windows` windows, batch 1, unpadded, every graph interleaved
    round by round: verify's real_b1 protocol."""
    sessions = {f.name: onnx_session(f / manifests.load(f).graph) for f in folders}
    times = time_artifacts(sessions, features, seq_len=squad.MAX_LENGTH, batch_sizes=(), workload_windows=windows,
                           rounds=rounds, warmup=1)
    return {name: t["real_b1"] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="The model the graphs were exported from.")
    parser.add_argument("--graphs", required=True, help="Folder of qtool INT8 graphs (full and reduced).")
    parser.add_argument("--standard", required=True, help="Folder holding std-int8-o2-dynamic (or that folder).")
    parser.add_argument("--questions", type=int, default=300, help="Search slice the windows come from.")
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--held-out", default=None, help="Folder of other INT8 graphs to validate on (not fitted).")
    parser.add_argument("--search", nargs="*", default=[], help="Search results to re-cost.")
    parser.add_argument("--model-out", default=None, help="Also write the fitted latency model here.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    standard = next(f for f in find_artifacts(args.standard) if f.name == "std-int8-o2-dynamic")
    def int8_graphs(root: str) -> list[Path]:
        found = [(f, manifests.load(f)) for f in find_artifacts(root)]
        return [f for f, m in found if m.precision == "int8" and m.kind == "qtool"]

    ours = int8_graphs(args.graphs)
    fitted = {f.name for f in ours}
    held_out = [f for f in int8_graphs(args.held_out) if f.name not in fitted] if args.held_out else []
    model = fit_latency_model([*ours, standard], rounds=args.rounds)
    if args.model_out:
        model.save(args.model_out)
    result = {"latency_model": asdict(model), "validation": [], "front": None}

    features = squad.featurize(search_examples(args.questions), load_qa_model(args.model)[1])
    lengths = features.attention_mask.sum(1)[: args.windows]
    graphs = [*ours, *held_out]
    print(f"timing {len(graphs) + 1} graphs on {len(lengths)} real windows (median {int(np.median(lengths))} tokens)")
    measured = time_real([*graphs, standard], features, args.windows, args.rounds)
    print(f"{'graph':<36} {'':>8} {'measured vs std':>16} {'predicted':>10} {'error':>7}")
    for folder in graphs:
        config = manifests.load(folder).length_config
        ratio = measured[folder.name] / measured[standard.name]
        predicted = model.cost(config, lengths)
        role = "fitted" if folder.name in fitted else "held out"
        result["validation"].append({"graph": folder.name, "config": config.label, "role": role,
                                     "measured_vs_std": ratio, "predicted_vs_std": predicted,
                                     "relative_error": predicted / ratio - 1})
        print(f"{folder.name:<36} {role:>8} {ratio:>16.3f} {predicted:>10.3f} {predicted / ratio - 1:>+7.1%}")

    if args.search:
        runs = []
        for path in args.search:
            data = json.loads(Path(path).read_text())
            runs += list(data.values()) if "evaluated" not in data else [data]
        variant = trained_variant(load_qa_model(args.model)[0])
        rows = {}
        for run in runs:
            if "rule ratio" in run["objective"]["maximize"]:
                continue  # the ratio rule is retired for graphs
            for row in run["evaluated"]:
                config = LengthConfig.parse(row["config"], model.layers, variant=variant)
                rows[row["config"]] = {**row, "latency_vs_std": model.cost(config, lengths)}
        rows = list(rows.values())
        front = [rows[i] for i in pareto_front([(r["latency_vs_std"], r["f1"]) for r in rows])]
        full_f1 = max(r["f1"] for r in rows if r["config"] == "full")
        result["front"] = front
        print(f"\n{len(rows)} searched configurations re-costed; front by predicted latency vs the standard recipe "
              f"(full model F1 {full_f1:.2f} on the search slice):")
        for row in front:
            print(f"    {row['config']:<28} {row['rule']:<5} latency {row['latency_vs_std']:.3f} ({1 / row['latency_vs_std']:.2f}x)  "
                  f"MACs {row['macs_unpadded']:.3f}  F1 {row['f1']:6.2f} ({row['f1'] - full_f1:+.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
