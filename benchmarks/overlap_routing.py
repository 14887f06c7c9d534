"""Route the questions whose words the context barely repeats to the full graph: does it close the low-overlap gap?

The shipped `match` graph ranks context tokens by their match with the question, so it loses most where the answer's
sentence repeats few of the question's words (the low overlap third, toolchain/data/overlap.py). The answer's sentence is
unknown before the graph runs; `overlap.context_overlap` (the best share any context sentence repeats) is known. This
study scores the reduced graph, the full graph and the best peer (c) per question, picks the routing threshold on
held-out SQuAD train documents (the smallest share of questions routed that keeps every third within 1 F1 of (c)),
and reports it on dev documents: F1 overall and per third, the share routed, and the time of the mix against (c)
(every window of the first dev questions, routed as the rule says, interleaved with (c), repeated).

    python benchmarks/overlap_routing.py --reduced G/int8-212-194-189-96-81-51-answer --full G/int8-full \
        --peer G/std-int8-openvino-nncf --model ../shared/models/minilm-squad-lat-doc-match --train 600 --dev 600

Train questions leave out the ones the model's last training stage saw (`--model`); dev questions are spread over
all of dev (`--spread-dev`) or its first ones (as the first run of this study did).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from qtool_runtime.timing import interleaved_ms
from toolchain.data import squad
from toolchain.data.overlap import THIRDS, context_overlap, f1_by_third, overlap_thirds
from toolchain.graph.runtime import Protocol, artifact_session, batches, question_f1
from toolchain.data.splits import search_examples, spread_dev, trained_questions
from toolchain.search.scoring import paired_interval
from toolchain.core.machine import machine_info

TOLERANCE = 1.0  # every third within this of (c)


def summary(f1: np.ndarray, third: np.ndarray) -> dict:
    return {"f1": 100 * float(f1.mean()), **f1_by_third(f1, third)}


def score_split(sessions: dict, examples, tokenizer) -> dict:
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)
    return {"f1": {name: question_f1(s, examples, features) for name, s in sessions.items()},
            "third": overlap_thirds(examples)[0],
            "proxy": np.asarray([context_overlap(e.question, e.context) for e in examples]),
            "features": features}


def routed(split: dict, threshold: float) -> np.ndarray:
    return np.where(split["proxy"] < threshold, split["f1"]["full"], split["f1"]["reduced"])


def choose_threshold(split: dict) -> float | None:
    """The smallest threshold that holds every third within TOLERANCE of (c) (None: not even routing every question
    does). Whether the mix's overall F1 also reaches (c)'s is reported beside it, not required: when the full graph
    itself sits a little below (c), no threshold would pass, and the trade-off would go unmeasured."""
    peer = summary(split["f1"]["peer"], split["third"])
    for threshold in sorted(set(np.round(split["proxy"], 4))) + [1.01]:
        mix = summary(routed(split, threshold), split["third"])
        if all(mix[k] >= peer[k] - TOLERANCE for k in THIRDS):
            return float(threshold)
    return None


def curve(split: dict, steps: int = 10) -> list[dict]:
    """F1 overall and per third against (c) when the lowest 0, 1/steps, ... of questions by the proxy are routed."""
    peer = summary(split["f1"]["peer"], split["third"])
    points = []
    for i in range(steps + 1):
        threshold = float(np.quantile(split["proxy"], i / steps)) + (1e-9 if i == steps else 0.0)
        mix = summary(routed(split, threshold), split["third"])
        points.append({"share_routed": float((split["proxy"] < threshold).mean()), "threshold": threshold,
                       **{k: mix[k] - peer[k] for k in ("f1", *THIRDS)}})
    return points


def time_mix(sessions: dict, split: dict, examples, threshold: float, windows: int, repeats: int) -> list[float]:
    """ms per window of the routed mix over (c)'s, on the first `windows` windows, `repeats` interleaved runs."""
    features = split["features"]
    rows_by_question = split["proxy"][features.example_index] < threshold
    feeds = [(int(rows[0]), inputs) for rows, inputs in batches(features, 1, protocol=Protocol.UNPADDED, invariant=True)]
    feeds = sorted(feeds)[:windows]

    def run(pick):
        def go():
            for row, inputs in feeds:
                sessions[pick(row)].run(None, inputs)
        return go

    work = {"mix": run(lambda row: "full" if rows_by_question[row] else "reduced"), "peer": run(lambda row: "peer")}
    ratios = []
    for _ in range(repeats):
        ms = interleaved_ms(work, rounds=3, warmup=1, untimed_first=True)
        ratios.append(ms["peer"] / ms["mix"])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", type=Path, required=True, help="the reduced graph")
    parser.add_argument("--full", type=Path, required=True, help="the full graph questions are routed to")
    parser.add_argument("--peer", type=Path, required=True, help="the peer it must hold against, (c)")
    parser.add_argument("--model", help="the model the graphs come from: its last stage's training questions are left out")
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--dev", type=int, default=1000)
    parser.add_argument("--spread-dev", action="store_true", help="dev questions spread over all of dev")
    parser.add_argument("--threshold", type=float, help="route below this share instead of the rule's threshold "
                        "(read off the train curve of an earlier run: still chosen on train)")
    parser.add_argument("--windows", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # each on the runtime its manifest names, as verify runs it ((c) on OpenVINO with its defaults)
    sessions = {name: artifact_session(folder, 2) for name, folder in
                (("reduced", args.reduced), ("full", args.full), ("peer", args.peer))}
    tokenizer = AutoTokenizer.from_pretrained(args.reduced, local_files_only=True)
    exclude = trained_questions(args.model) if args.model else frozenset()
    train = search_examples(args.train, neighbours=2, exclude=exclude)
    dev = spread_dev(args.dev) if args.spread_dev else squad.load_squad("dev", limit=args.dev, neighbours=2)
    report = {"machine": machine_info(2), "reduced": args.reduced.name, "full": args.full.name, "peer": args.peer.name,
              "train_questions": len(train), "left_out_trained": len(exclude), "dev_questions": len(dev),
              "dev_questions_from": "all of dev, spread" if args.spread_dev else "the start of dev"}
    tuned = score_split(sessions, train, tokenizer)
    threshold = choose_threshold(tuned) if args.threshold is None else args.threshold
    report["threshold"], report["threshold_from"] = threshold, "the rule" if args.threshold is None else "--threshold"
    for name, examples, split in (("train", train, tuned), ("dev", dev, score_split(sessions, dev, tokenizer))):
        rows = {g: summary(f1, split["third"]) for g, f1 in split["f1"].items()}
        if threshold is not None:
            rows["routed"] = summary(routed(split, threshold), split["third"])
            rows["routed"]["share_routed"] = float((split["proxy"] < threshold).mean())
        peer = split["f1"]["peer"]
        for graph in rows:  # the paired F1 difference from (c) on the same questions, overall and per third
            f1 = routed(split, threshold) if graph == "routed" else split["f1"][graph]
            rows[graph]["vs_peer"] = {"all": paired_interval(f1, peer), **{
                t: paired_interval(f1[split["third"] == i], peer[split["third"] == i]) for i, t in enumerate(THIRDS)}}
        report[name] = rows
        report[f"{name}_curve_vs_peer"] = curve(split)
        if name == "dev" and threshold is not None:
            report["dev_speed_vs_peer"] = time_mix(sessions, split, examples, threshold, args.windows, args.repeats)
    for name in ("train", "dev"):
        for graph, row in report[name].items():
            print(f"{name:5s} {graph:8s} F1 {row['f1']:.2f}  " + " / ".join(f"{row[t]:.2f}" for t in THIRDS)
                  + (f"  routed {row['share_routed']:.2f}" if "share_routed" in row else "")
                  + "  vs (c) " + "  ".join(f"{k} {d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for k, (d, lo, hi) in row["vs_peer"].items()))
    for point in report["train_curve_vs_peer"]:
        print(f"train routed {point['share_routed']:.2f}: vs (c) {point['f1']:+.2f}  "
              + " / ".join(f"{point[t]:+.2f}" for t in THIRDS))
    print("threshold", threshold)
    if "dev_speed_vs_peer" in report:
        r = report["dev_speed_vs_peer"]
        print(f"dev mix vs (c): {statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
