"""Measure what a deployment team cares about, side by side: SQuAD v1.1 EM/F1 under both input protocols,
latency under the papers' protocol and the real workload, size, FLOPs, kept-token agreement.

Every artifact is loaded into one process and timed in interleaved rounds (each round runs every graph
once per latency protocol), so machine drift hits all graphs alike; medians after warm-up. Ratios
between graphs are the figures to compare; absolute times differ from machine to machine.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from qtool_runtime.contract import Engine, Precision, length_runs
from qtool_runtime.engines import available

from ..artifact import artifact, output
from ..data import squad
from ..artifact import manifest as manifests
from ..artifact.manifest import Kind
from ..artifact.output import REPORT_FILES, OutputKind, RootKind, Target
from qtool_runtime.timing import interleaved_ms
from ..model.families import dims_of
from ..data.overlap import THIRDS, overlap_thirds
from .peers import PEERS, STANDARD_INT8
from .report import VerifyError, write_report
from ..core.length import LengthConfig
from ..core.settings import TorchReference, VerifySettings
from ..artifact.interface import GraphError, GraphInterface, is_invariant
from ..core.machine import machine_info
from ..graph.runtime import (
    Protocol,
    kept_agreement,
    onnx_session,
    predict_onnx,
    predict_torch,
    score,
    synthetic_feed,
)


def evaluate_model(
    model_dir: str | Path,
    configs: Sequence[str] = ("full",),
    *,
    squad_file: str = "dev",
    limit: int | None = None,
    seq_len: int = squad.MAX_LENGTH,
    variant: str | None = None,
    protocol: str = Protocol.PADDED,
    batch_size: int = 32,
    neighbours: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """SQuAD EM/F1 of a PyTorch checkpoint under each length configuration ('full' or 'k1,k2,...');
    `neighbours` > 0: the document workload (squad.widen_contexts)."""
    from ..model.drop_and_restore import flops_ratio, load_qa_model, trained_variant

    model, tokenizer = load_qa_model(model_dir)
    variant = variant or trained_variant(model)
    dims = dims_of(model)
    if not 2 <= seq_len <= dims.max_positions:
        raise VerifyError(f"--seq-len {seq_len} is outside what the model takes (2..{dims.max_positions})")
    parsed = [LengthConfig.parse(c, dims.layers, seq_len, variant=variant) for c in configs]
    examples = squad.load_squad(squad_file, limit=limit, neighbours=neighbours)
    features = squad.featurize(examples, tokenizer, max_length=seq_len, doc_stride=squad.default_doc_stride(seq_len))
    rows = []
    for config in parsed:
        preds = predict_torch(model, features, config, batch_size=batch_size, protocol=protocol, show_progress=show_progress)
        rows.append({
            "config": config.label, "rule": config.rule, "variant": config.variant, "protocol": protocol,
            "neighbours": neighbours,
            "flops_ratio": flops_ratio(config, dims.hidden, dims.ffn),
            **score(examples, features, preds),
        })
    return rows


def _workload_rows(features: squad.Features, windows: int) -> np.ndarray:
    """The real workload's windows: those of the first questions, up to `windows` windows and never part of a
    question (so ms per question is ms per window times windows per question)."""
    rows = np.arange(min(windows, len(features)))
    if len(rows) < len(features):  # drop a question cut at the boundary, unless it is the only one
        last = features.example_index[len(rows)]
        whole = rows[features.example_index[rows] != last]
        rows = whole if len(whole) else rows
    return rows


def _buckets(features: squad.Features, rows: np.ndarray, full_up_to: int = 0) -> list[dict]:
    """`rows` sorted by length in batches of 32 padded to each batch's longest (for a routed graph, batches that
    never straddle its `full_up_to`, as the kit runs it)."""
    lengths = features.attention_mask.sum(1)
    bucketed = []
    for run in length_runs([int(n) for n in lengths[rows]], 32, threshold=full_up_to):
        chunk = rows[run]
        bucketed.append({k: v[:, :int(lengths[chunk].max())] for k, v in features.model_inputs(chunk).items()})
    return bucketed


def _workload(features: squad.Features, windows: int, full_up_to: int = 0) -> tuple[list[dict], list[dict], int]:
    """The real workload (`_workload_rows`) at its own length one window at a time (batch 1), the same windows in
    length-sorted batches (`_buckets`), and how many questions they hold."""
    rows = _workload_rows(features, windows)
    lengths = features.attention_mask.sum(1)
    single = [{k: v[:, : int(lengths[r])] for k, v in features.model_inputs(np.array([r])).items()} for r in rows]
    questions = len(set(features.example_index[rows].tolist()))
    return single, _buckets(features, rows, full_up_to), questions


# One synthetic batch of b windows is timed as SYNTHETIC_CALLS // b calls per round (at least one): a single 384-token
# call is about 13 ms, and one call per round moved the papers' b1 ratio of one graph between 1.22x and 1.75x.
SYNTHETIC_CALLS = 8


def time_artifacts(
    sessions: dict[str, object],
    features: squad.Features,
    *,
    seq_len: int,
    batch_sizes: Sequence[int] = (1, 32),
    workload_windows: int = 200,
    rounds: int = 8,
    warmup: int = 2,
    log: Callable[[str], None] = print,
    keeps: dict[str, object] | None = None,
    thresholds: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """Median ms of every session under every latency protocol, all sessions interleaved round by round.

    `keeps`: per name, the keep counts a run-time configuration graph runs (several names may share a session).
    `thresholds`: per name, a routed graph's full_up_to (its bucketed batches never straddle it).

    Keys: 'b{n}@{seq_len}' (a batch of n windows, all seq_len real tokens); 'real_b1' and 'real_b32' (ms per
    window over the dev workload, unpadded one by one, or length-bucketed batches of 32). Every piece is timed warm;
    'b{n}@...' is ms per call over SYNTHETIC_CALLS // n calls (at least one) per round.
    """
    single, bucketed, _ = _workload(features, workload_windows)
    n = sum(b["input_ids"].shape[0] for b in single)
    rows = _workload_rows(features, workload_windows)

    def runner(session, keep, threshold):
        interface = GraphInterface.of_session(session)
        own = _buckets(features, rows, threshold) if threshold else bucketed
        wanted, extra = set(interface.inputs), interface.keep_feed(keep, seq_len)
        feeds = {f"b{b}@{seq_len}": [synthetic_feed(interface, b, seq_len, keep=keep)] * max(1, SYNTHETIC_CALLS // b)
                 for b in batch_sizes}
        feeds["real_b1"] = [{k: v for k, v in f.items() if k in wanted} | extra for f in single]
        feeds["real_b32"] = [{k: v for k, v in f.items() if k in wanted} | extra for f in own]
        return feeds

    feeds = {name: runner(s, (keeps or {}).get(name), (thresholds or {}).get(name, 0)) for name, s in sessions.items()}

    def run_all(session, batch_list):
        for feed in batch_list:
            session.run(None, feed)

    work = {(name, key): partial(run_all, sessions[name], batch_list)
            for name in sessions for key, batch_list in feeds[name].items()}
    # each piece runs once untimed before it is timed in every round, as route and fit-latency time graphs: switching
    # between graphs evicts the last one's weights, and a deployment serving one graph runs it warm
    medians = interleaved_ms(work, rounds=rounds, warmup=warmup, untimed_first=True, log=log)
    return {name: {key: medians[(name, key)] / (n if key.startswith("real") else len(feeds[name][key])) for key in feeds[name]}
            for name in sessions}


def report_destination(root: Path, report_dir: str | Path | None) -> Path:
    """Where the report goes, checked before any work (`toolchain.artifact.output`): never inside an artifact, never over
    files that are not a previous report. Default: the artifact root, or the folder of a single artifact."""
    root = Path(root)
    if report_dir is not None:
        dest = Path(report_dir)
    elif (root / artifact.MANIFEST).is_file():
        dest = root.parent
    else:
        dest = root
    report = Target(dest / REPORT_FILES[0], OutputKind.REPORT)
    return output.check_root(dest, RootKind.REPORTS, [report],
                             option="--report-dir" if report_dir is not None else "report folder")


def verify_artifacts(
    root: str | Path,
    settings: VerifySettings = VerifySettings(),
    *,
    model_dir: str | Path | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Score and time every artifact under `root`; write report.json/.md and pareto.png to the report folder.

    Rows: PyTorch FP32 (reference; `settings.torch_configs`), then each artifact. Speedups are against the
    standard recipe's INT8 graph when present (and the FP32 full qtool graph). Steps: workload -> rows -> time ->
    derive -> report.
    """
    settings.check()
    root = Path(root)
    found = dict(manifests.find(root))
    dest = report_destination(root, settings.report_dir)
    examples, features = _workload_of(found, settings, log)
    first = next(iter(found.values()))
    thirds, cuts = overlap_thirds(examples)
    rows = _torch_rows(model_dir or first.source_model, found, examples, features, settings, show_progress, log, thirds)
    sessions, keeps, preds = {}, {}, {}
    rows += _onnx_rows(found, examples, features, settings, sessions, keeps, preds, show_progress, log, thirds)
    log(f"timing {len(sessions)} graphs side by side ({settings.rounds} rounds after 2 warm-up)")
    latency = time_artifacts(sessions, features, seq_len=first.length_config.seq_len, batch_sizes=settings.batch_sizes,
                             workload_windows=settings.workload_windows, rounds=settings.rounds, log=log, keeps=keeps,
                             thresholds={f.name: m.length_config.full_up_to for f, m in found.items()})
    for row in rows:
        if row["name"] in latency:
            row["latency_ms"] = latency[row["name"]]
    _derive(rows, preds, features, settings.protocols)
    report = _report(examples, features, rows, settings, seq_len=first.length_config.seq_len,
                     baseline=STANDARD_INT8 if STANDARD_INT8 in latency else None)
    report["overlap_thirds"] = {"begin": dict(zip(THIRDS[1:], cuts)), "definition": "toolchain/data/overlap.py"}
    report["models"] = sorted({m.source_model for m in found.values()})
    write_report(dest, report)
    report["report_dir"] = str(dest)
    return report


def _workload_of(found: dict, settings: VerifySettings, log: Callable[[str], None]):
    """The questions and their windows, cut as the first artifact's manifest says (length, stride)."""
    from transformers import AutoTokenizer

    first = next(iter(found.values()))
    seq_len = first.length_config.seq_len
    tokenizer = AutoTokenizer.from_pretrained(next(iter(found)), local_files_only=True, use_fast=True)
    examples = squad.load_squad(settings.squad_file, limit=settings.limit, neighbours=settings.neighbours)
    features = squad.featurize(examples, tokenizer, max_length=seq_len, doc_stride=first.doc_stride)
    real = features.attention_mask.sum(1)
    log(f"{len(examples)} questions, {len(features)} windows (mean {real.mean():.0f} real tokens) at length {seq_len}")
    return examples, features


def _torch_rows(model_dir, found: dict, examples, features: squad.Features, settings: VerifySettings,
                show_progress: bool, log: Callable[[str], None], thirds: np.ndarray | None = None) -> list[dict]:
    """The PyTorch FP32 reference rows: the full model, and with 'all' every FP32 qtool configuration found."""
    if settings.torch_configs == TorchReference.NONE:
        return []
    from ..model.drop_and_restore import flops_ratio, load_qa_model

    if not model_dir or not Path(model_dir, "config.json").is_file():
        raise FileNotFoundError(f"PyTorch reference model not found ({model_dir!r}); pass --model DIR or --torch-configs none")
    model, _ = load_qa_model(model_dir)
    dims = dims_of(model)
    seq_len = next(iter(found.values())).length_config.seq_len
    configs = [LengthConfig.full(dims.layers, seq_len)]
    if settings.torch_configs == TorchReference.ALL:
        configs += [m.length_config for m in found.values()
                    if m.kind == Kind.QTOOL and m.precision == Precision.FP32 and not m.length_config.is_full]
    rows = []
    for config in configs:
        row = {"name": f"pytorch-fp32-{config.name()}", "runtime": "pytorch", "kind": Kind.QTOOL, "precision": Precision.FP32,
               "config": config.label, "rule": config.rule, "flops_ratio": flops_ratio(config, dims.hidden, dims.ffn)}
        invariant = is_invariant(config)
        for protocol in _distinct_protocols(settings.protocols, invariant=invariant):
            result = score(examples, features, predict_torch(model, features, config, protocol=protocol,
                                                             show_progress=show_progress), thirds)
            for same in _same_as(protocol, settings.protocols, invariant=invariant):
                row[f"f1_{same}"], row[f"em_{same}"] = result["f1"], result["exact_match"]
                row[f"f1_by_overlap_{same}"] = result.get("f1_by_overlap")
        rows.append(row)
        log(f"  {row['name']:<36} " + "  ".join(f"F1 {p} {row[f'f1_{p}']:.2f}" for p in settings.protocols))
    return rows


def _onnx_rows(found: dict, examples, features: squad.Features, settings: VerifySettings, sessions: dict, keeps: dict,
               preds: dict, show_progress: bool, log: Callable[[str], None], thirds: np.ndarray | None = None
               ) -> list[dict]:
    """One row per artifact and runtime (per menu entry of a run-time graph, named <folder>@<configuration>; on a
    runtime besides the manifest's, <name>:<runtime>); fills the sessions and keep counts the timing step runs,
    and the predictions the derive step compares."""
    rows = []
    for folder, manifest in found.items():
        own = Engine(manifest.engine)
        for engine in [own, *(Engine(e) for e in settings.engines if e != own)]:
            if engine is not own and not available(engine):
                raise VerifyError(f"{engine} is not installed: pip install 'qtool[{engine}]'")
            try:
                session = onnx_session(folder / manifest.graph, settings.threads, engine,
                                       exact=manifest.runs_exactly)
            except GraphError as exc:
                if engine is own:
                    raise
                log(f"  {folder.name}:{engine} does not run: {exc}")
                rows.append({"name": f"{folder.name}:{engine}", "runtime": str(engine), "kind": manifest.kind,
                             "precision": manifest.precision, "config": manifest.length_config.label,
                             "rule": manifest.length_config.rule, "flops_ratio": manifest.flops_ratio,
                             "does_not_run": str(exc)})
                continue
            if engine is own:
                manifests.check_runs(folder, session)  # a manifest edited to another configuration is refused
            for config in manifest.menu_configs() if manifest.is_runtime else [None]:
                name = folder.name if config is None else f"{folder.name}@{config.label}"
                native = name
                name = name if engine is own else f"{name}:{engine}"
                sessions[name] = session
                keeps[name] = None if config is None else [config.seq_len if k is None else k for k in config.keep]
                row = _artifact_row(name, folder, manifest, session, config, examples, features, settings.protocols,
                                    preds, keeps[name], show_progress, thirds, engine)
                if engine is not own:
                    row["vs_own_runtime"] = logit_agreement(preds[(native, settings.protocols[0])],
                                                            preds[(name, settings.protocols[0])])
                twin = manifests.twin_of(folder, manifest, found)
                row["fp32_twin"] = None if twin is None else twin.name if config is None else f"{twin.name}@{config.label}"
                rows.append(row)
                log(f"  {row['name']:<36} " + "  ".join(f"F1 {p} {row[f'f1_{p}']:.2f}" for p in settings.protocols))
    return rows


def logit_agreement(a, b) -> dict[str, float]:
    """How far one graph's span logits on two runtimes are apart: the largest |difference| over real positions and
    the share of windows whose best start and best end agree."""
    real = np.isfinite(a.start_logits) & np.isfinite(b.start_logits)
    diff = max(float(np.abs(np.where(real, x - y, 0)).max()) for x, y in
               ((a.start_logits, b.start_logits), (a.end_logits, b.end_logits)))
    best = [np.argmax(np.where(real, x, -np.inf), 1) == np.argmax(np.where(real, y, -np.inf), 1)
            for x, y in ((a.start_logits, b.start_logits), (a.end_logits, b.end_logits))]
    return {"max_abs_logit_diff": diff, "same_best_span_share": float((best[0] & best[1]).mean())}


def _report(examples, features: squad.Features, rows: list[dict], settings: VerifySettings, *, seq_len: int,
            baseline: str | None) -> dict:
    """The report's record: what was scored (workload, windows), on which machine, how it was timed, the rows."""
    real = features.attention_mask.sum(1)
    single, _, workload_questions = _workload(features, settings.workload_windows)
    return {
        "squad_file": str(settings.squad_file), "questions": len(examples), "windows": len(features),
        "workload": squad.workload_name(settings.neighbours),
        "full_windows": float((real == seq_len).mean()),
        "mean_real_tokens": float(real.mean()), "seq_len": seq_len, "protocols": list(settings.protocols),
        "machine": machine_info(settings.threads),
        "latency": {"batch_sizes": list(settings.batch_sizes), "rounds": settings.rounds, "warmup": 2,
                    "statistic": "median", "workload_windows": len(single), "workload_questions": workload_questions,
                    "windows_per_question": len(single) / workload_questions, "interleaved": True},
        "baseline": baseline,
        "versions": artifact.tool_versions(), "commit": artifact.source_commit(), "rows": rows,
    }


def _artifact_row(name: str, folder: Path, manifest: manifests.Manifest, session, config: LengthConfig | None,
                  examples, features: squad.Features, protocols: Sequence[str], preds: dict, keep, show_progress: bool,
                  thirds: np.ndarray | None = None, engine: Engine = Engine.ONNXRUNTIME) -> dict:
    """One artifact's row (at one menu entry of a run-time graph): F1/EM under every protocol, size, recipe."""
    config = config or manifest.length_config
    row = {"name": name, "runtime": str(engine), "kind": manifest.kind, "precision": manifest.precision,
           "config": config.label, "rule": config.rule,
           "flops_ratio": next((e.macs_ratio for e in manifest.menu or [] if e.keep == config.keep), manifest.flops_ratio),
           "size_mb": (folder / manifest.graph).stat().st_size / 1e6,
           "recipe": ((manifest.quantization or {}).get("recipe") or {}).get("name", "")}
    # FP32 invariance is exact (tests check it); an INT8 graph's is a property to measure: every protocol runs
    trusted = manifest.invariant and manifest.precision == Precision.FP32
    for protocol in _distinct_protocols(protocols, invariant=trusted):
        p = predict_onnx(session, features, protocol=protocol, invariant=trusted, show_progress=show_progress, keep=keep,
                         full_up_to=config.full_up_to)
        result = score(examples, features, p, thirds)
        for same in _same_as(protocol, protocols, invariant=trusted):
            preds[(name, same)] = p
            row[f"f1_{same}"], row[f"em_{same}"] = result["f1"], result["exact_match"]
            row[f"f1_by_overlap_{same}"] = result.get("f1_by_overlap")
    row["batchable"] = manifest.feeding["batchable"]
    row["f1_spread"] = max(row[f"f1_{p}"] for p in protocols) - min(row[f"f1_{p}"] for p in protocols)
    return row


def _distinct_protocols(protocols: Sequence[str], *, invariant: bool) -> list[str]:
    """Protocols that can give different answers. An invariant graph (see interface.is_invariant) gives the same
    logits under every protocol, so it is scored once (tests check that they agree)."""
    return list(protocols[:1]) if invariant else list(protocols)


def _same_as(protocol: str, protocols: Sequence[str], *, invariant: bool) -> list[str]:
    return list(protocols) if invariant else [protocol]


def _derive(rows: list[dict], preds: dict, features: squad.Features, protocols: Sequence[str]) -> None:
    """Speedups vs each peer (the standard recipes (b), (c)), the best peer and qtool's FP32 full graph; F1 vs the
    peers; INT8 vs its FP32 twin."""
    by_name = {r["name"]: r for r in rows}
    peers = {label: by_name[name] for label, name in PEERS.items() if "latency_ms" in by_name.get(name, {})}
    baselines = {**peers,
                 "fp32_full": next((r for r in rows if r["runtime"] == Engine.ONNXRUNTIME and r["kind"] == Kind.QTOOL
                                    and r["precision"] == Precision.FP32 and r["config"] == "full"), None)}
    for row in rows:
        if "does_not_run" in row:
            continue
        if peers:
            row["f1_vs_best_peer"] = {p: row[f"f1_{p}"] - max(b[f"f1_{p}"] for b in peers.values()) for p in protocols}
        if "std" in peers:
            row["f1_vs_std"] = {p: row[f"f1_{p}"] - peers["std"][f"f1_{p}"] for p in protocols}
        if "latency_ms" not in row:
            continue
        for label, base in baselines.items():
            if base is not None and "latency_ms" in base:
                row[f"speedup_vs_{label}"] = {k: base["latency_ms"][k] / v for k, v in row["latency_ms"].items()}
        if peers:
            row["speedup_vs_best_peer"] = {k: min(b["latency_ms"][k] for b in peers.values()) / v
                                           for k, v in row["latency_ms"].items()}
        twin = by_name.get(row.get("fp32_twin") or "")
        if twin is not None:
            row["int8_cost_f1"] = {p: twin[f"f1_{p}"] - row[f"f1_{p}"] for p in protocols}
            row["kept_agreement_vs_fp32"] = kept_agreement(
                preds[(twin["name"], protocols[0])], preds[(row["name"], protocols[0])], features.attention_mask)


