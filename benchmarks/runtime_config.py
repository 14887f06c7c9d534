"""One graph for every budget (#18): the run-time configuration graph against each configuration's own graph.

For every menu entry of ROOT/<precision>-runtime and its own graph ROOT/<precision>-<config> (same precision):
- equality (FP32): max |logit difference| on real tokens and kept-token agreement, on SQuAD dev documents;
- accuracy (INT8): F1 of both on dev paragraphs and dev documents (each INT8 graph has its own calibration);
- latency: ms per run at batch 1, on a full synthetic window (seq_len real tokens) and on real document windows
  run one at a time, both graphs interleaved round by round in one loop; the ratio runtime / own per repeat,
  reported as median and range over repeats (each graph runs once untimed before it is timed: a deployment
  serving one graph runs it warm). Not a test:

    python benchmarks/runtime_config.py graphs/runtime --repeats 3 --out results/runtime-configuration-graph/runtime-config-18.json
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np

from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.artifact.interface import GraphInterface
from toolchain.graph.runtime import Protocol, kept_agreement, onnx_session, predict_onnx, score, synthetic_feed
from qtool_runtime.timing import interleaved_ms
from toolchain.core.machine import machine_info


def pairs(root: Path, precision: str) -> tuple[Path, list[tuple[str, list[int], Path]]]:
    """The run-time artifact and, per menu entry, (label, keep counts, its own artifact)."""
    runtime = root / f"{precision}-runtime"
    manifest = manifests.load(runtime)
    out = []
    for config in manifest.menu_configs():
        own = root / f"{precision}-{config.name()}"
        if own.is_dir():
            out.append((config.label, [config.seq_len if k is None else k for k in config.keep], own))
    return runtime, out


def equality(root: Path, features: squad.Features) -> dict:
    runtime, entries = pairs(root, "fp32")
    session, real = onnx_session(runtime / "model.onnx"), features.attention_mask.astype(bool)
    out = {}
    for label, keep, own in entries:
        got = predict_onnx(session, features, protocol=Protocol.UNPADDED, keep=keep)
        want = predict_onnx(onnx_session(own / "model.onnx"), features, protocol=Protocol.UNPADDED)
        diff = max(np.abs(got.start_logits - want.start_logits)[real].max(), np.abs(got.end_logits - want.end_logits)[real].max())
        agreement = kept_agreement(want, got, features.attention_mask) if want.kept is not None else []
        out[label] = {"max_abs_diff": float(diff), "kept_agreement_min": min(agreement) if agreement else 1.0}
        print(f"fp32 {label:<28} max|Δlogit| {diff:.1e}  kept agreement {out[label]['kept_agreement_min']:.4f}", flush=True)
    return out


def accuracy(root: Path, workloads: dict[str, tuple[list, squad.Features]]) -> dict:
    runtime, entries = pairs(root, "int8")
    session = onnx_session(runtime / "model.onnx")
    out = {}
    for label, keep, own in entries:
        own_session = onnx_session(own / "model.onnx")
        row = {}
        for name, (examples, features) in workloads.items():
            row[name] = {
                "runtime": score(examples, features, predict_onnx(session, features, protocol=Protocol.BUCKETED,
                                                                 invariant=True, keep=keep))["f1"],
                "own": score(examples, features, predict_onnx(own_session, features, protocol=Protocol.BUCKETED,
                                                             invariant=True))["f1"]}
        out[label] = row
        print(f"int8 {label:<28} " + "  ".join(f"{n}: F1 runtime {r['runtime']:.2f} own {r['own']:.2f}"
                                              for n, r in row.items()), flush=True)
    return out


def latency(root: Path, precision: str, doc_features: squad.Features, *, rounds: int, repeats: int,
            windows: int) -> dict:
    """Per entry: runtime / own ms ratio per repeat, on b1 full synthetic windows and on real document windows."""
    runtime, entries = pairs(root, precision)
    manifest = manifests.load(runtime)
    seq_len = manifest.length_config.seq_len
    session = onnx_session(runtime / "model.onnx")
    lengths = doc_features.attention_mask.sum(1)
    wanted = set(GraphInterface.of_session(session).inputs)  # families without token_type_ids take fewer
    real = [{k: v[r: r + 1, : lengths[r]] for k, v in doc_features.model_inputs().items() if k in wanted}
            for r in range(windows)]

    def run_all(sess, feeds):
        for feed in feeds:
            sess.run(None, feed)

    work = {}
    for label, keep, own in entries:
        own_session = onnx_session(own / "model.onnx")
        own_iface, rt_iface = GraphInterface.of_session(own_session), GraphInterface.of_session(session)
        keep_feed = rt_iface.keep_feed(keep, seq_len)
        work[("synthetic", label, "runtime")] = partial(session.run, None, synthetic_feed(rt_iface, 1, seq_len, keep=keep))
        work[("synthetic", label, "own")] = partial(own_session.run, None, synthetic_feed(own_iface, 1, seq_len))
        work[("documents", label, "runtime")] = partial(run_all, session, [f | keep_feed for f in real])
        work[("documents", label, "own")] = partial(run_all, own_session, real)
    ratios: dict[tuple[str, str], list[float]] = {}
    ms: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(repeats):
        times = interleaved_ms(work, rounds=rounds, warmup=2, untimed_first=True)  # each graph timed warm
        for (load, label, which), value in times.items():
            ms.setdefault((load, label, which), []).append(value)
        for load, label, _ in times:
            if (load, label) not in ratios or len(ratios[(load, label)]) <= repeat:
                ratios.setdefault((load, label), []).append(times[(load, label, "runtime")] / times[(load, label, "own")])
        print(f"repeat {repeat + 1}: " + "  ".join(f"{k[0]} {k[1]} {v[-1]:.3f}" for k, v in ratios.items()), flush=True)
    return {f"{load} {label}": {"runtime_over_own": [round(float(np.median(v)), 3), round(min(v), 3), round(max(v), 3)],
                                "ms_runtime_median": round(float(np.median(ms[(load, label, "runtime")])), 2),
                                "ms_own_median": round(float(np.median(ms[(load, label, "own")])), 2)}
            for (load, label), v in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding fp32-runtime, int8-runtime and fp32-/int8-<config>")
    parser.add_argument("--paragraph-questions", type=int, default=1000, help="SQuAD dev questions 0..N-1 as paragraphs")
    parser.add_argument("--document-questions", type=int, default=300, help="SQuAD dev questions 0..N-1 as documents")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=8, help="real document windows per timed run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.root / "fp32-runtime", local_files_only=True)
    manifest = manifests.load(args.root / "fp32-runtime")
    featurize = partial(squad.featurize, tokenizer=tokenizer, max_length=manifest.length_config.seq_len,
                        doc_stride=manifest.doc_stride)
    docs = squad.load_squad("dev", limit=args.document_questions, neighbours=squad.DOCUMENT_NEIGHBOURS)
    paragraphs = squad.load_squad("dev", limit=args.paragraph_questions)
    doc_features = featurize(docs)
    report = {"machine": machine_info(None), "root": str(args.root), "model": manifest.source_model,
              "paragraph_questions": len(paragraphs), "document_questions": len(docs),
              "document_windows": len(doc_features), "rounds": args.rounds, "repeats": args.repeats}
    report["latency_int8"] = latency(args.root, "int8", doc_features, rounds=args.rounds, repeats=args.repeats,
                                     windows=args.windows)
    report["equality_fp32"] = equality(args.root, featurize(docs[:100]))
    report["accuracy_int8"] = accuracy(args.root, {"paragraphs": (paragraphs, featurize(paragraphs)),
                                                   squad.workload_name(squad.DOCUMENT_NEIGHBOURS): (docs, doc_features)})
    report["sizes_mb"] = {p.name: round((p / "model.onnx").stat().st_size / 1e6, 1) for p in sorted(args.root.iterdir())
                          if (p / "model.onnx").is_file()}
    print(json.dumps({k: report[k] for k in ("latency_int8", "sizes_mb")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
