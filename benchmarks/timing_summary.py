"""Median and range of speed against the standard recipe over repeated `qtool verify` reports.

Each report times every graph side by side in one process; the ratio to the standard recipe's INT8 graph is taken
within each report, then the median and range over the repeats (ratios move run to run on a noisy machine).

    for i in 1 2 3; do qtool verify runs/ship-time --limit 40 --torch-configs none --rounds 3 --workload 64 \\
        --report-dir runs/time/par-$i; done
    python benchmarks/timing_summary.py runs/time/par-*/report.json
"""

from __future__ import annotations

import json
import statistics
import sys

BASELINE = "std-int8-o2-dynamic"


def summarize(paths: list[str]) -> list[str]:
    reports = [json.load(open(p)) for p in paths]
    first = reports[0]
    lines = [f"{len(reports)} repeats on {first['machine']['cpu']}, {first['machine']['threads']} threads; "
             f"workload {first.get('workload', 'paragraphs')}; latency {first['latency']}"]
    keys = list(next(r for r in first["rows"] if r["name"] == BASELINE)["latency_ms"])
    for name in [r["name"] for r in first["rows"] if "latency_ms" in r]:
        cells = []
        for key in keys:
            ours = [next(r for r in rep["rows"] if r["name"] == name)["latency_ms"][key] for rep in reports]
            base = [next(r for r in rep["rows"] if r["name"] == BASELINE)["latency_ms"][key] for rep in reports]
            ratios = [b / o for b, o in zip(base, ours)]
            cells.append(f"{key} {statistics.median(ours):.1f} ms, x(b) {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        lines.append(f"  {name}: " + " | ".join(cells))
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: timing_summary.py REPORT.json [REPORT.json ...]")
    print("\n".join(summarize(sys.argv[1:])))
