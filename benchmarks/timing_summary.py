"""Median and range of speed against the best peer over repeated `qtool verify` reports.

Each report times every graph side by side in one process; the ratio to the best peer (the faster of the standard
recipe (b) and the OpenVINO recipe (c) present, per column; verify's `speedup_vs_best_peer`) is taken within each
report, then the median and range over the repeats (ratios move run to run on a noisy machine).

    for i in 1 2 3; do qtool verify runs/ship-time --limit 40 --torch-configs none --rounds 3 --workload 64 \\
        --report-dir runs/time/par-$i; done
    python benchmarks/timing_summary.py runs/time/par-*/report.json
"""

from __future__ import annotations

import json
import statistics
import sys



def summarize(paths: list[str]) -> list[str]:
    reports = [json.load(open(p)) for p in paths]
    first = reports[0]
    lines = [f"{len(reports)} repeats on {first['machine']['cpu']}, {first['machine']['threads']} threads; "
             f"workload {first.get('workload', 'paragraphs')}; latency {first['latency']}"]
    for name in [r["name"] for r in first["rows"] if "speedup_vs_best_peer" in r]:
        cells = []
        for key in next(r for r in first["rows"] if r["name"] == name)["latency_ms"]:
            rows = [next(r for r in rep["rows"] if r["name"] == name) for rep in reports]
            ours = [r["latency_ms"][key] for r in rows]
            ratios = [r["speedup_vs_best_peer"][key] for r in rows]
            cells.append(f"{key} {statistics.median(ours):.1f} ms, x peer {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f})")
        lines.append(f"  {name}: " + " | ".join(cells))
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: timing_summary.py REPORT.json [REPORT.json ...]")
    print("\n".join(summarize(sys.argv[1:])))
