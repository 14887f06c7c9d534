"""The README's results table, regenerated from one study's `qtool verify` reports.

A study folder holds scoring runs (`score-documents/`, `score-paragraphs/`: F1 on many questions) and timing runs
(`time-documents-N/`, `time-paragraphs-N/`: every graph side by side, repeated). Speed is the ratio to the best peer
(the faster of the standard recipes (b) and (c) in each report), median and range over the repeats.

    python benchmarks/results_table.py results/openvino-peer                # print the table
    python benchmarks/results_table.py results/openvino-peer --readme README.md   # replace it in the README
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"
PEER_LABELS = {"std-int8-o2-dynamic": "(b) standard recipe: optimum + onnxruntime fusions + dynamic INT8",
               "std-int8-openvino-nncf": "(c) OpenVINO + NNCF static INT8"}


def _reports(study: Path, prefix: str) -> list[dict]:
    return [json.loads((d / "report.json").read_text()) for d in sorted(study.glob(f"{prefix}*")) if (d / "report.json").is_file()]


def _rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["rows"]}


def speed_ratios(reports: list[dict], name: str, key: str) -> list[float]:
    """`name`'s ratio to the faster peer in column `key`, one per report that timed that column (every report
    must hold the graph)."""
    ratios = [_rows(rep)[name].get("speedup_vs_best_peer", {}).get(key) for rep in reports]
    return [r for r in ratios if r is not None]


def median_and_range(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else ""


def _speed(reports: list[dict], name: str, key: str) -> str:
    return median_and_range(speed_ratios(reports, name, key))


def _f1(report: dict | None, name: str, protocol: str, thirds: bool = False) -> str:
    row = _rows(report).get(name) if report else None
    if row is None or f"f1_{protocol}" not in row:
        return ""
    text = f"{row[f'f1_{protocol}']:.2f}"
    by = row.get(f"f1_by_overlap_{protocol}") if thirds else None
    return text + (f" ({by['low']:.1f} / {by['middle']:.1f} / {by['high']:.1f})" if by else "")


def table(study: Path) -> str:
    documents, paragraphs = _reports(study, "score-documents"), _reports(study, "score-paragraphs")
    doc_times, par_times = _reports(study, "time-documents-"), _reports(study, "time-paragraphs-")
    docs, pars = (documents or [None])[0], (paragraphs or [None])[0]
    names = [r["name"] for r in (docs or pars)["rows"] if "does_not_run" not in r]
    seq = (docs or pars)["seq_len"]
    lines = ["| graph | runtime | size | documents F1 (low / middle / high overlap) | documents speed | "
             "paragraphs F1 (low / middle / high) | paragraphs speed | padded 384 F1 | papers' b1@384 | papers' b32@384 |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for name in names:
        row = _rows(docs or pars)[name]
        base = name.split(":")[0]
        label = PEER_LABELS.get(base, f"qtool `{base}`")
        lines.append(" | ".join([
            f"| {label}", row["runtime"], f"{row['size_mb']:.1f} MB",
            _f1(docs, name, "unpadded", True), _speed(doc_times, name, "real_b1"),
            _f1(pars, name, "unpadded", True), _speed(par_times, name, "real_b1"), _f1(pars, name, "padded"),
            _speed(par_times, name, f"b1@{seq}"), _speed(par_times, name, f"b32@{seq}")]) + " |")
    first = (doc_times or par_times or [docs or pars])[0]
    machine, versions = first["machine"], first["versions"]
    made_by = (f"Model: {', '.join('../shared/models/' + Path(m).name for m in first['models'])}; "
               f"code: commit {first.get('commit') or 'unknown'}."
               if "models" in first else f"Model and code: [{study}]({study}/README.md).")
    notes = [f"Machine: {machine['cpu']} ({', '.join(machine.get('flags', []))}), {machine['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in versions.items() if k in ("onnxruntime", "openvino", "torch")) + ".",
             made_by,
             f"Documents: the first {docs['questions'] if docs else '?'} dev questions, each context widened by two "
             f"paragraphs each side; paragraphs: the first {pars['questions'] if pars else '?'}; both unpadded, one "
             f"window at a time. Speed: ms per window against the faster of (b) and (c) in the same run, median "
             f"(range) of {len(doc_times)} and {len(par_times)} repeats."]
    failed = [r["name"] + " (" + r["does_not_run"].split(": ", 2)[-1][:120] + ")"
              for r in (docs or pars)["rows"] if "does_not_run" in r]
    if failed:
        notes.append("Graphs that do not run on a runtime: " + "; ".join(failed) + ".")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def replace_in(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", content), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--readme", type=Path, default=None, help="replace the table between the markers in this file")
    args = parser.parse_args()
    text = table(args.study)
    if args.readme:
        replace_in(args.readme, text)
    print(text)


if __name__ == "__main__":
    main()
