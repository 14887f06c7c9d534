"""Measure what a deployment team cares about: SQuAD v1.1 EM/F1, latency, size, FLOPs, kept-token agreement.

One prediction path per runtime (PyTorch Drop-and-Restore, onnxruntime) feeds the same SQuAD post-processing
and official metric, so FP32/INT8 and PyTorch/ONNX rows differ only by the runtime under test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import squad
from .model import LengthConfig, drop_and_restore

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Predictions:
    start_logits: np.ndarray
    end_logits: np.ndarray
    kept: list[np.ndarray] | None = None  # per layer [n, k_i] kept positions, when the runtime reports them


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="feat", disable=not enabled, dynamic_ncols=True, leave=False)


def _batches(features: squad.Features, batch_size: int, trim_padding: bool):
    """Yield (rows, inputs) batches. With `trim_padding`, rows are taken in length order and each batch is cut
    to its longest real sequence: exact for the full configuration (padding is masked), about twice as fast
    on SQuAD. Never used for reduced configurations, whose kept counts depend on the padded length."""
    lengths = features.attention_mask.sum(1)
    order = np.argsort(lengths, kind="stable") if trim_padding else np.arange(len(features))
    for lo in range(0, len(features), batch_size):
        rows = order[lo : lo + batch_size]
        inputs = features.model_inputs(rows)
        if trim_padding:
            width = int(lengths[rows].max())
            inputs = {k: v[:, :width] for k, v in inputs.items()}
        yield rows, inputs


def _assemble(n: int, width: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Put batch logits back in feature order; positions a trimmed batch did not compute get -1e4."""
    start = np.full((n, width), -1e4, dtype=np.float32)
    end = np.full((n, width), -1e4, dtype=np.float32)
    for rows, s, e in parts:
        start[rows, : s.shape[1]] = s
        end[rows, : e.shape[1]] = e
    return start, end


def predict_torch(
    model: torch.nn.Module,
    features: squad.Features,
    config: LengthConfig | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
) -> Predictions:
    """Span logits from the PyTorch Drop-and-Restore model (FP32, eval mode)."""
    model.eval()
    trim = config is None or config.is_full
    parts, kept = [], []
    with torch.inference_mode(), _progress(len(features), "torch", show_progress) as bar:
        for rows, inputs in _batches(features, batch_size, trim):
            batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
            s, e, k = drop_and_restore(model, **batch, config=config, return_kept=True)
            parts.append((rows, s.float().numpy(), e.float().numpy()))
            if not trim:
                kept.append([x.numpy() for x in k])
            bar.update(len(rows))
    start, end = _assemble(len(features), features.input_ids.shape[1], parts)
    layers = [np.concatenate([b[i] for b in kept]) for i in range(len(kept[0]))] if kept else None
    return Predictions(start, end, layers)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation; a corrupt graph raises a clear error."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX graph not found: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise ValueError(f"{path} is not a loadable ONNX graph: {exc}") from exc


def predict_onnx(session, features: squad.Features, batch_size: int = 32, show_progress: bool = False) -> Predictions:
    """Span logits (and kept positions, if the graph outputs them) from an onnxruntime session."""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    trim = not any(n.startswith("kept_") for n in names)  # no drop ops: the full configuration
    parts, kept = [], []
    with _progress(len(features), "onnx", show_progress) as bar:
        for rows, inputs in _batches(features, batch_size, trim):
            out = dict(zip(names, session.run(None, {k: v for k, v in inputs.items() if k in wanted})))
            parts.append((rows, out["start_logits"], out["end_logits"]))
            kept.append([out[n] for n in names if n.startswith("kept_")])
            bar.update(len(rows))
    start, end = _assemble(len(features), features.input_ids.shape[1], parts)
    layers = [np.concatenate([b[i] for b in kept]) for i in range(len(kept[0]))] if kept and kept[0] else None
    return Predictions(start, end, layers)


def score(examples: Sequence[squad.SquadExample], features: squad.Features, preds: Predictions) -> dict:
    """Official SQuAD v1.1 EM/F1 of span logits."""
    answers = squad.postprocess(examples, features, preds.start_logits, preds.end_logits)
    return squad.squad_scores(answers, examples)


def kept_agreement(a: Predictions, b: Predictions, attention_mask: np.ndarray) -> list[float]:
    """Per layer, the share of real (non-padding) kept tokens both runs keep: |A ∩ B| / |A|, over all rows."""
    if a.kept is None or b.kept is None:
        return []
    shares = []
    for ka, kb in zip(a.kept, b.kept):
        same = total = 0
        for row in range(ka.shape[0]):
            real = attention_mask[row]
            sa = {int(p) for p in ka[row] if real[p]}
            sb = {int(p) for p in kb[row] if real[p]}
            same += len(sa & sb)
            total += len(sa)
        shares.append(same / total if total else 1.0)
    return shares


def latency_ms(session, batch_size: int, seq_len: int, warmup: int = 3, runs: int = 10, seed: int = 0) -> float:
    """Median wall-clock milliseconds of one onnxruntime run on a full-length batch, after warm-up."""
    rng = np.random.default_rng(seed)
    wanted = {i.name for i in session.get_inputs()}
    feed = {
        "input_ids": rng.integers(1000, 20000, size=(batch_size, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64),
    }
    feed = {k: v for k, v in feed.items() if k in wanted}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def evaluate_model(
    model_dir: str | Path,
    configs: Sequence[str] = ("full",),
    squad_file: str = "dev",
    limit: int | None = None,
    seq_len: int = squad.MAX_LENGTH,
    batch_size: int = 32,
    show_progress: bool = True,
) -> list[dict]:
    """SQuAD EM/F1 of a PyTorch checkpoint under each length configuration ('full' or 'k1,k2,...')."""
    from .model import flops_ratio, load_qa_model

    model, tokenizer = load_qa_model(model_dir)
    layers = len(model.base_model.encoder.layer)
    parsed = [LengthConfig.parse(c, layers, seq_len) for c in configs]
    examples = squad.load_squad(squad_file, limit=limit)
    features = squad.featurize(examples, tokenizer, max_length=seq_len)
    rows = []
    for config in parsed:
        preds = predict_torch(model, features, config, batch_size, show_progress)
        rows.append(
            {
                "config": config.label,
                "flops_ratio": flops_ratio(config, model.config.hidden_size, model.config.intermediate_size),
                **score(examples, features, preds),
            }
        )
    return rows


def _length_config(manifest: dict) -> LengthConfig:
    return LengthConfig(tuple(manifest["length_config"]["keep"]), manifest["length_config"]["seq_len"])


def verify_artifacts(
    root: str | Path,
    model_dir: str | Path | None = None,
    squad_file: str = "dev",
    limit: int | None = None,
    batch_sizes: Sequence[int] = (1, 32),
    runs: int = 10,
    threads: int | None = None,
    torch_configs: str = "full",
    show_progress: bool = True,
    log=print,
) -> dict:
    """Score and time every artifact under `root` on SQuAD dev; write report.json/.md and pareto.png there.

    Rows: PyTorch FP32 (the reference; `torch_configs` = 'full', 'all' or 'none'), then each ONNX artifact.
    Speedups are against the FP32 full-configuration ONNX artifact when one is present.
    """
    from transformers import AutoTokenizer

    from . import artifact
    from .model import load_qa_model

    root = Path(root)
    folders = artifact.find_artifacts(root)
    manifests = {f: artifact.check_artifact(f) for f in folders}
    first = folders[0]
    seq_len = manifests[first]["length_config"]["seq_len"]
    tokenizer = AutoTokenizer.from_pretrained(first, local_files_only=True, use_fast=True)
    examples = squad.load_squad(squad_file, limit=limit)
    features = squad.featurize(examples, tokenizer, max_length=seq_len)
    log(f"{len(examples)} questions, {len(features)} features at length {seq_len}")

    rows: list[dict] = []
    model_dir = model_dir or manifests[first].get("source_model")
    if torch_configs != "none":
        if not model_dir or not Path(model_dir, "config.json").is_file():
            raise FileNotFoundError(
                f"PyTorch reference model not found ({model_dir!r}); pass --model DIR or --torch-configs none"
            )
        model, _ = load_qa_model(model_dir)
        layers = len(model.base_model.encoder.layer)
        configs = [LengthConfig.full(layers, seq_len)]
        if torch_configs == "all":
            configs += [
                _length_config(m) for m in manifests.values() if m["precision"] == "fp32" and not _length_config(m).is_full
            ]
        for config in configs:
            preds = predict_torch(model, features, config, show_progress=show_progress)
            result = score(examples, features, preds)
            rows.append({
                "name": f"pytorch-fp32-{config.name()}", "runtime": "pytorch", "precision": "fp32",
                "config": config.label,
                "flops_ratio": _flops(model, config),
                **_metrics(result),
            })
            log(f"  {rows[-1]['name']:<40} F1 {result['f1']:.2f}  EM {result['exact_match']:.2f}")

    onnx_preds: dict[str, Predictions] = {}
    for folder in folders:
        manifest = manifests[folder]
        graph = folder / manifest["graph"]
        session = onnx_session(graph, threads)
        preds = predict_onnx(session, features, show_progress=show_progress)
        onnx_preds[folder.name] = preds
        result = score(examples, features, preds)
        row = {
            "name": folder.name, "runtime": "onnxruntime", "precision": manifest["precision"],
            "config": _length_config(manifest).label, "flops_ratio": manifest["flops_ratio"],
            "size_mb": graph.stat().st_size / 1e6, **_metrics(result),
            "recipe": (manifest.get("quantization") or {}).get("recipe", {}),
        }
        for b in batch_sizes:
            row[f"latency_b{b}_ms"] = latency_ms(session, b, seq_len, runs=runs)
        rows.append(row)
        log(f"  {folder.name:<40} F1 {result['f1']:.2f}  EM {result['exact_match']:.2f}  "
            + "  ".join(f"b{b} {row[f'latency_b{b}_ms']:.1f} ms" for b in batch_sizes))

    _derive(rows, onnx_preds, features, batch_sizes)
    report = {
        "squad_file": str(squad_file), "questions": len(examples), "features": len(features), "seq_len": seq_len,
        "threads": threads, "latency": {"batch_sizes": list(batch_sizes), "runs": runs, "warmup": 3, "statistic": "median"},
        "versions": artifact.tool_versions(), "rows": rows,
    }
    _write_report(root, report)
    for folder in folders:
        row = next(r for r in rows if r["name"] == folder.name)
        artifact.update_manifest(folder, metrics={k: v for k, v in row.items() if k not in ("name", "recipe")}
                                 | {"squad_file": str(squad_file), "questions": len(examples)})
    return report


def _flops(model, config: LengthConfig) -> float:
    from .model import flops_ratio

    return flops_ratio(config, model.config.hidden_size, model.config.intermediate_size)


def _metrics(result: dict) -> dict:
    return {"f1": result["f1"], "exact_match": result["exact_match"]}


def _derive(rows: list[dict], onnx_preds: dict, features: squad.Features, batch_sizes: Sequence[int]) -> None:
    """F1 drop vs PyTorch FP32 full, speedup vs ONNX FP32 full, INT8-vs-FP32 kept-token agreement."""
    reference = next((r for r in rows if r["runtime"] == "pytorch" and r["config"] == "full"), None)
    fp32_full = next((r for r in rows if r["runtime"] == "onnxruntime" and r["precision"] == "fp32" and r["config"] == "full"), None)
    for row in rows:
        if reference is not None:
            row["f1_drop_vs_pytorch_full"] = reference["f1"] - row["f1"]
        if fp32_full is not None and row["runtime"] == "onnxruntime":
            for b in batch_sizes:
                row[f"speedup_b{b}"] = fp32_full[f"latency_b{b}_ms"] / row[f"latency_b{b}_ms"]
        if row["runtime"] == "onnxruntime" and row["precision"] == "int8":
            twin = row["name"].replace("int8-", "fp32-", 1)
            if twin in onnx_preds and twin != row["name"]:
                row["kept_agreement_vs_fp32"] = kept_agreement(onnx_preds[twin], onnx_preds[row["name"]], features.attention_mask)


def format_table(report: dict, markdown: bool = False) -> str:
    """The papers' Table 1, one row per runtime x precision x configuration."""
    from prettytable import PrettyTable, TableStyle

    batch_sizes = report["latency"]["batch_sizes"]
    table = PrettyTable()
    table.field_names = (
        ["artifact", "runtime", "config", "F1", "EM", "ΔF1", "FLOPs"]
        + [f"ms b{b}" for b in batch_sizes] + [f"speedup b{b}" for b in batch_sizes]
        + ["MB", "kept agree (min)"]
    )
    for r in report["rows"]:
        agree = r.get("kept_agreement_vs_fp32")
        table.add_row(
            [r["name"], f"{r['runtime']} {r['precision']}", r["config"], f"{r['f1']:.2f}", f"{r['exact_match']:.2f}",
             f"{r['f1_drop_vs_pytorch_full']:+.2f}" if "f1_drop_vs_pytorch_full" in r else "",
             f"{r['flops_ratio']:.2f}"]
            + [f"{r[f'latency_b{b}_ms']:.1f}" if f"latency_b{b}_ms" in r else "" for b in batch_sizes]
            + [f"{r[f'speedup_b{b}']:.2f}x" if f"speedup_b{b}" in r else "" for b in batch_sizes]
            + [f"{r['size_mb']:.1f}" if "size_mb" in r else "", f"{min(agree):.3f}" if agree else ""]
        )
    table.align = "r"
    table.align["artifact"] = "l"
    table.align["runtime"] = "l"
    table.align["config"] = "l"
    if markdown:
        table.set_style(TableStyle.MARKDOWN)
    return table.get_string()


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and F1 (higher)."""
    front = []
    for i, (cost, f1) in enumerate(points):
        if not any((c <= cost and f >= f1) and (c < cost or f > f1) for c, f in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: dict, path: str | Path) -> Path:
    """F1 against batch-1 latency for every ONNX artifact, the Pareto front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["runtime"] == "onnxruntime" and "latency_b1_ms" in r]
    points = [(r["latency_b1_ms"], r["f1"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r, (x, y) in zip(rows, points):
        ax.scatter(x, y, marker="o" if r["precision"] == "fp32" else "s",
                   color="tab:blue" if r["precision"] == "fp32" else "tab:orange")
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 6 if r["precision"] == "fp32" else -12), fontsize=7)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="gray", label="Pareto front")
    ref = next((r for r in report["rows"] if r["runtime"] == "pytorch" and r["config"] == "full"), None)
    if ref:
        ax.axhline(ref["f1"], color="green", lw=0.8, label=f"PyTorch FP32 full ({ref['f1']:.1f})")
    ax.set_xlabel(f"latency, batch 1, seq {report['seq_len']} (ms, median)")
    ax.set_ylabel(f"SQuAD v1.1 F1 ({report['questions']} questions)")
    ax.set_title("qtool: F1 vs latency (onnxruntime CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _write_report(root: Path, report: dict) -> None:
    import json
    import os

    for name, text in (
        ("report.json", json.dumps(report, indent=2)),
        ("report.md", "# qtool verify report\n\n"
         f"SQuAD `{report['squad_file']}`, {report['questions']} questions ({report['features']} features), "
         f"seq {report['seq_len']}; latency: onnxruntime CPU, median of {report['latency']['runs']} runs after "
         f"{report['latency']['warmup']} warm-up runs; ΔF1 vs PyTorch FP32 full; speedup vs ONNX FP32 full.\n\n"
         + format_table(report, markdown=True) + "\n"),
    ):
        tmp = root / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, root / name)
    if any("latency_b1_ms" in r for r in report["rows"]):
        plot_pareto(report, root / "pareto.png")
