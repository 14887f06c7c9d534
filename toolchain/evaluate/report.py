"""The verify report: its table (the papers' Table 1 with the peers beside it), the F1-latency plot and the files
written (report.json, report.md, pareto.png)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from qtool_runtime.contract import Precision
from qtool_runtime.errors import QtoolError

from ..artifact.manifest import Kind
from ..core import atomic
from ..core.pareto import pareto_front
from ..data.overlap import THIRDS


class VerifyError(QtoolError, ValueError):
    """Bad verify input found before any work starts."""


def format_table(report: dict, markdown: bool = False) -> str:
    """The papers' Table 1 with the peers beside it: F1 per protocol and per overlap third (the first protocol),
    latency per protocol, speed against the best peer (the faster of the standard recipes (b) and (c), per column)."""
    from prettytable import PrettyTable, TableStyle

    protocols = report["protocols"]
    keys = [f"b{b}@{report['seq_len']}" for b in report["latency"]["batch_sizes"]] + ["real_b1", "real_b32"]
    table = PrettyTable()
    table.field_names = (["graph", "runtime", "precision", "config", "rule"] + [f"F1 {p}" for p in protocols]
                         + ["spread"] + [f"F1 {t}" for t in THIRDS]
                         + [f"ms {k}" for k in keys] + [f"x peer {k}" for k in keys] + ["MB", "FLOPs"])
    for r in report["rows"]:
        if "does_not_run" in r:
            continue  # listed below the table
        lat, speed = r.get("latency_ms", {}), r.get("speedup_vs_best_peer", {})
        thirds = r.get(f"f1_by_overlap_{protocols[0]}") or {}
        table.add_row(
            [r["name"], r.get("runtime", ""), r["precision"], r["config"], r["rule"] if r["config"] != "full" else ""]
            + [f"{r[f'f1_{p}']:.2f}" for p in protocols] + [f"{r['f1_spread']:.2f}" if "f1_spread" in r else ""]
            + [f"{thirds[t]:.2f}" if t in thirds else "" for t in THIRDS]
            + [f"{lat[k]:.2f}" if k in lat else "" for k in keys]
            + [f"{speed[k]:.2f}x" if k in speed else "" for k in keys]
            + [f"{r['size_mb']:.1f}" if "size_mb" in r else "", f"{r['flops_ratio']:.2f}"]
        )
    table.align = "r"
    for col in ("graph", "runtime", "precision", "config", "rule"):
        table.align[col] = "l"
    if markdown:
        table.set_style(TableStyle.MARKDOWN)
    failed = [f"{r['name']} does not run: {r['does_not_run']}" for r in report["rows"] if "does_not_run" in r]
    return "\n".join([table.get_string(), *failed])


PARETO_PANELS = (("b32@384", "padded", "papers' protocol: batches of 32 padded to 384"),
                 ("real_b1", "unpadded", "real workload: dev windows one by one, unpadded"))


def plot_pareto(report: dict, path: str | Path, panels: Sequence[tuple[str, str, str]] = PARETO_PANELS) -> Path:
    """F1 against latency for every ONNX graph, one panel per (latency protocol, F1 protocol) pair; points
    are numbered and named in a shared legend, so close points stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, p, t) for k, p, t in panels if any(k in r.get("latency_ms", {}) for r in report["rows"])]
    if not panels:
        raise VerifyError("the report has no latency under the plotted protocols")
    rows = [r for r in report["rows"] if "latency_ms" in r]
    styles = {(Kind.QTOOL, Precision.FP32): ("o", "tab:blue"), (Kind.QTOOL, Precision.INT8): ("s", "tab:orange"),
              (Kind.STANDARD, Precision.FP32): ("^", "tab:gray"), (Kind.STANDARD, Precision.INT8): ("D", "tab:red")}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels) + 2.8, 4.8), dpi=120, squeeze=False)
    for ax, (key, protocol, title) in zip(axes[0], panels):
        shown = [(i, r) for i, r in enumerate(rows, 1) if key in r["latency_ms"] and f"f1_{protocol}" in r]
        points = [(r["latency_ms"][key], r[f"f1_{protocol}"]) for _, r in shown]
        for (i, r), (x, y) in zip(shown, points):
            marker, color = styles[(r["kind"], r["precision"])]
            ax.scatter(x, y, marker=marker, color=color, s=36, zorder=3)
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(points)
        ax.plot([points[j][0] for j in front], [points[j][1] for j in front], "--", color="gray", lw=0.8)
        unit = "ms per window" if key.startswith("real") else "ms per batch"
        ax.set_xlabel(f"latency {key} ({unit}, median)")
        ax.set_ylabel(f"SQuAD v1.1 F1, {protocol} ({report['questions']} questions)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=styles[(r["kind"], r["precision"])][0], color=styles[(r["kind"], r["precision"])][1],
                          linestyle="", label=f"{i}  {r['name']}") for i, r in enumerate(rows, 1)]
    handles.append(plt.Line2D([], [], linestyle="--", color="gray", label="Pareto front"))
    fig.legend(handles=handles, loc="center right", fontsize=7.5, frameon=False)
    fig.suptitle(f"F1 vs latency, onnxruntime CPU ({report['machine']['cpu']}, {report['machine']['threads']} threads)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / (6.2 * len(panels) + 2.8), 1))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(dest: Path, report: dict) -> None:
    lat = report["latency"]
    atomic.write_text(dest / "report.json", json.dumps(report, indent=2) + "\n")
    atomic.write_text(dest / "report.md", (
        "# qtool verify report\n\n"
        f"SQuAD `{report['squad_file']}`, {report.get('workload', 'paragraphs')}: {report['questions']} questions "
        f"({report['windows']} windows, mean {report['mean_real_tokens']:.0f} real tokens), configurations stated for {report['seq_len']} tokens. "
        f"F1 per input protocol: padded (batches of 32 windows, each padded to {report['seq_len']}), unpadded "
        f"(every window alone at its real length) and bucketed (length-sorted batches of 32 padded to their "
        f"longest); `spread` is the largest F1 difference between protocols (0 for a batch-invariant graph). Latency: onnxruntime CPU on {report['machine']['cpu']} ({report['machine']['threads']} "
        f"threads, flags {', '.join(report['machine']['flags'])}); every graph in one process, {lat['rounds']} "
        f"interleaved rounds after {lat['warmup']} warm-up, medians. `b1@L`/`b32@L`: one batch of L real tokens "
        f"(ms per batch); `real_b1`: the windows of the first {lat.get('workload_questions', '?')} questions "
        f"({lat['workload_windows']} windows, {lat.get('windows_per_question', float('nan')):.2f} per question) one by one, unpadded; "
        f"`real_b32`: the same windows length-sorted in batches of 32 padded to each batch's longest (ms per "
        f"window). `x std`: speedup against the standard recipe ({report['baseline']}).\n\n"
        + format_table(report, markdown=True) + "\n"))
    if any(k in r.get("latency_ms", {}) for r in report["rows"] for k, _, _ in PARETO_PANELS):
        tmp = dest / ".pareto.png.tmp.png"
        plot_pareto(report, tmp)
        os.replace(tmp, dest / "pareto.png")
