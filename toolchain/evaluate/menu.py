"""Score a run-time configuration graph's menu into its manifest: F1 per workload and ms per window, per entry.

The kit ranks menu entries by recorded F1 (most accurate first) when it chooses under a budget or a latency
target, so the F1 comes from held-out SQuAD *train* (the search's slice: never dev, which reports use), on the
two workloads the search scores: paragraphs and documents. The milliseconds are a record of this machine (one
full window at batch 1); a server re-times the menu where it runs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from qtool_runtime.errors import QtoolError

from ..artifact import manifest as manifests
from ..core.machine import machine_info
from ..data import squad
from ..data.splits import search_examples, trained_questions
from ..graph.runtime import Protocol, onnx_session, predict_onnx, score

DEFAULT_QUESTIONS = 200


class MenuError(QtoolError, ValueError):
    """A menu that cannot be scored (the artifact runs one configuration)."""


def score_menu(folder: str | Path, *, questions: int = DEFAULT_QUESTIONS, offset: int = 0,
               neighbours: int = squad.DOCUMENT_NEIGHBOURS, rounds: int = 5,
               log: Callable[[str], None] = print) -> manifests.Manifest:
    """Measure every menu entry of the run-time artifact `folder` and rewrite its manifest with the figures."""
    from qtool_runtime import Artifact
    from transformers import AutoTokenizer

    folder = Path(folder)
    manifest = manifests.load(folder)
    if not manifest.is_runtime:
        raise MenuError(f"{folder} runs one configuration; only a run-time configuration graph has a menu")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    seq_len = manifest.length_config.seq_len
    seen = trained_questions(manifest.source_model) if Path(manifest.source_model).is_dir() else frozenset()
    workloads = {squad.workload_name(n): search_examples(questions, offset, n, exclude=seen) for n in (0, neighbours)}
    features = {name: squad.featurize(ex, tokenizer, max_length=seq_len, doc_stride=manifest.doc_stride)
                for name, ex in workloads.items()}
    session = onnx_session(folder / manifest.graph)
    kit = Artifact.open(folder)
    times = kit.measure_menu(lengths=(seq_len,), rounds=rounds)
    menu = []
    for entry in manifest.menu:
        f1 = {name: round(score(ex, features[name], predict_onnx(
            session, features[name], protocol=Protocol.BUCKETED, invariant=manifest.invariant,
            keep=entry.feed(seq_len)))["f1"], 2) for name, ex in workloads.items()}
        menu.append(replace(entry, f1=f1, ms=round(times.ms[kit.label(entry)][0], 2)))
        log(f"  {kit.label(entry):<28} " + "  ".join(f"{n}: F1 {v:.2f}" for n, v in f1.items())
            + f"  {menu[-1].ms:.1f} ms per {seq_len}-token window")
    record = {"squad_file": "train", "questions": questions, "offset": offset, "workloads": list(workloads),
              "left_out_trained": len(seen),
              "protocol": Protocol.BUCKETED, "ms": f"median of {rounds}, one {seq_len}-token window, batch 1",
              "machine": machine_info(None)}
    scored = replace(manifest, menu=menu, menu_scored=record, files={}, created=None, versions={})
    return manifests.write(folder, scored)
