"""The ship rule, applied: the fastest graph whose F1 holds each peer's on every workload and overlap third.

"Holds" is the rule `qtool search` recommends by (toolchain.search.recommend: within RECOMMEND_TOLERANCE F1 of the bar
on each workload, within THIRD_TOLERANCE on each overlap third), here on held-out SQuAD train questions scored by
`benchmarks/heldout_compare.py` (one report per workload, the graphs' F1 paired on the same questions). Speed: repeated
`qtool verify` timing reports of the same graphs, documents one window at a time, against the faster peer in each
report; the median over the repeats decides, the range is printed. Each peer is taken as the bar in turn.

    python benchmarks/ship_rule.py results/ship-rule/heldout-train-documents.json \\
        results/ship-rule/heldout-train-paragraphs.json --timing results/answer-ranking/time-documents-*/report.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from toolchain.data.overlap import THIRDS
from toolchain.evaluate.peers import OPENVINO_INT8, STANDARD_INT8
from toolchain.search.recommend import RECOMMEND_TOLERANCE, THIRD_TOLERANCE, holds, recommend

from results_table import median_and_range, speed_ratios  # benchmarks/, beside this script

PEER_LABELS = {OPENVINO_INT8: "(c)", STANDARD_INT8: "(b)"}
SPEED_KEY = "real_b1"  # real windows, one at a time: the target's column


def f1_rows(heldout: list[dict]) -> dict[str, dict]:
    """Each graph's F1 by workload and by workload/third, in the form recommend() reads."""
    rows: dict[str, dict] = {}
    for report in heldout:
        workload = report["workload"]
        for name, r in report["rows"].items():
            row = rows.setdefault(name, {"config": name, "f1_by_workload": {}, "f1_by_third": {}})
            row["f1_by_workload"][workload] = r["f1"]
            row["f1_by_third"].update({f"{workload}/{t}": r[t] for t in THIRDS})
    complete = [name for name, r in rows.items() if len(r["f1_by_workload"]) == len(heldout)]
    return {name: rows[name] for name in complete}


def apply(heldout: list[dict], timing: list[dict]) -> list[str]:
    rows = f1_rows(heldout)
    in_every_report = set.intersection(*({r["name"] for r in report["rows"]} for report in timing))
    speed = {name: ratios for name in rows.keys() & in_every_report
             if (ratios := speed_ratios(timing, name, SPEED_KEY))}
    workloads = [r["workload"] for r in heldout]
    for name, row in rows.items():
        row["f1"] = row["f1_by_workload"][workloads[0]]
        if name in speed:
            row["cost"] = 1.0 / statistics.median(speed[name])
    sets = ", ".join(f"{r['questions']} questions as {r['workload']}" for r in heldout)
    lines = [f"held-out train: {sets}; timing: {len(timing)} reports, {SPEED_KEY}; "
             f"holds = within {RECOMMEND_TOLERANCE} F1 on each workload, {THIRD_TOLERANCE} on each third"]
    for peer, label in PEER_LABELS.items():
        if peer not in rows:
            continue
        bar = rows[peer]
        lines.append(f"\nbar {label} {peer}: " + ", ".join(f"{w} {bar['f1_by_workload'][w]:.2f}" for w in workloads))
        for name, row in rows.items():
            if name in PEER_LABELS:
                continue
            deltas = " | ".join(f"{w} {row['f1_by_workload'][w] - bar['f1_by_workload'][w]:+.2f} ("
                                + " / ".join(f"{row['f1_by_third'][f'{w}/{t}'] - bar['f1_by_third'][f'{w}/{t}']:+.1f}"
                                             for t in THIRDS) + ")" for w in workloads)
            timed = median_and_range(speed.get(name, [])) or "not timed"
            lines.append(f"  {name:<46} {deltas}  speed {timed}  {'holds' if holds(row, bar) else '-'}")
        pick = recommend([r for n, r in rows.items() if n not in PEER_LABELS and "cost" in r], reference=bar)
        lines.append(f"  pick: {pick['config'] if pick else 'none of the timed graphs holds ' + label}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heldout", type=Path, nargs="+", help="heldout_compare.py reports, one per workload")
    parser.add_argument("--timing", type=Path, nargs="+", required=True, help="qtool verify report.json, repeats")
    args = parser.parse_args()
    print("\n".join(apply([json.loads(p.read_text()) for p in args.heldout],
                          [json.loads(p.read_text()) for p in args.timing])))


if __name__ == "__main__":
    main()
