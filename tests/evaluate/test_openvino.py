"""qtool on OpenVINO Runtime (the openvino extra, installed by the README's test command): qtool's graphs run, scored
and checked against onnxruntime on OpenVINO; the kit answering on it. The OpenVINO + NNCF peer (c), built and measured
by bench beside (b): tests/evaluate/test_bench.py."""

from __future__ import annotations

import onnx
import pytest

from conftest import REDUCED
from qtool_runtime import Artifact, ArtifactError
from toolchain.artifact import manifest as manifests
from toolchain.data import squad



def test_the_kit_answers_on_openvino_as_on_onnxruntime(exported_root):
    examples = squad.load_squad("dev", limit=12)
    pairs = [(e.question, e.context) for e in examples]
    for name in ("fp32-full", "fp32-" + REDUCED.replace(",", "-")):
        on_ort = Artifact.open(exported_root / name).answer_batch(pairs)
        on_openvino = Artifact.open(exported_root / name, engine="openvino").answer_batch(pairs)
        assert [a.text for a in on_openvino] == [a.text for a in on_ort], name
        assert max(abs(a.score - b.score) for a, b in zip(on_ort, on_openvino)) < 1e-3
    with pytest.raises(ArtifactError, match="unknown runtime 'tensorrt'; known: onnxruntime, openvino"):
        Artifact.open(exported_root / "fp32-full", engine="tensorrt")


VERIFY_ON_OPENVINO_THEN_SIGTERM = """
import os, signal, sys
from pathlib import Path
from toolchain.core import atomic
from toolchain.core.settings import VerifySettings
from toolchain.evaluate.verify import verify_artifacts
verify_artifacts(sys.argv[1], VerifySettings(limit=8, protocols=("unpadded",), batch_sizes=(1,), rounds=1,
                 workload_windows=4, engines=("openvino",), torch_configs="none", report_dir=sys.argv[3]),
                 show_progress=False, log=lambda _: None)
with atomic.staging_dir(Path(sys.argv[2])):
    os.kill(os.getpid(), signal.SIGTERM)
"""


def test_verify_runs_qtool_graphs_on_openvino_and_sigterm_still_exits_cleanly(exported_root, tmp_path):
    """verify --engine openvino scores and times every graph on OpenVINO too and compares its logits with
    onnxruntime's. In a child process, because what follows is a SIGTERM: OpenVINO 2026.4 leaves a dangling
    alternate signal stack after compiling some graphs, and unless qtool restores the thread's own, that SIGTERM
    (qtool's clean exit from staging) kills the process with SIGSEGV."""
    import json
    import subprocess
    import sys

    root = tmp_path / "graphs"
    root.mkdir()
    reduced = "fp32-" + REDUCED.replace(",", "-")
    for name in ("fp32-full", reduced):
        (root / name).symlink_to(exported_root / name)
    done = subprocess.run([sys.executable, "-c", VERIFY_ON_OPENVINO_THEN_SIGTERM, str(root), str(tmp_path / "art"),
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 143, done.stderr[-2000:]
    assert not (tmp_path / "art").exists()
    rows = {r["name"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert set(rows) == {"fp32-full", reduced, "fp32-full:openvino", f"{reduced}:openvino"}
    for name in ("fp32-full", reduced):
        on_openvino = rows[f"{name}:openvino"]
        assert on_openvino["runtime"] == "openvino" and rows[name]["runtime"] == "onnxruntime"
        assert on_openvino["vs_own_runtime"]["max_abs_logit_diff"] < 1e-3, name
        assert on_openvino["vs_own_runtime"]["same_best_span_share"] == 1.0
        assert on_openvino["f1_unpadded"] == rows[name]["f1_unpadded"]
        assert on_openvino["latency_ms"]["real_b1"] > 0


def test_the_full_static_int8_graph_in_qdq_form_runs_on_openvino(exported_root, tmp_path):
    """INC's static INT8 in QDQ form (recipe static-fp32-out-qdq) is the full graph OpenVINO reads: its QuantizeLinear
    / DequantizeLinear pairs and attention stay standard where the QOperator form's com.microsoft.QAttention does not
    convert. The kit answers with it on OpenVINO as on onnxruntime, within INT8 rounding."""
    from toolchain.core.settings import QuantizeSettings
    from toolchain.quantize.quantize import quantize_artifact

    settings = QuantizeSettings(samples=16, tune=False, recipes=("static-fp32-out-qdq",))
    int8 = quantize_artifact(exported_root / "fp32-full", tmp_path / "int8-full", settings=settings, log=lambda _: None)
    ops = {(n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert ("ai.onnx", "DequantizeLinear") in ops and ("ai.onnx", "MatMul") in ops
    assert not {op for domain, op in ops if domain == "com.microsoft"} - {"MultiHeadAttention", "Attention", "Gelu"}
    examples = squad.load_squad("dev", limit=12)
    pairs = [(e.question, e.context) for e in examples]
    on_ort = Artifact.open(int8).answer_batch(pairs)
    on_openvino = Artifact.open(int8, engine="openvino").answer_batch(pairs)
    assert sum(a.text == b.text for a, b in zip(on_ort, on_openvino)) >= 10


def test_static_int8_for_openvino_keeps_the_standard_form_and_the_runtimes_precision(exported_root, tmp_path):
    """`--recipe static-openvino`: INC's static INT8 of the reduced Drop-and-Restore graph in QDQ form, without the
    onnxruntime-only graph passes, for OpenVINO Runtime at its default precision (bf16 on CPUs with AVX-512 BF16 or
    AMX). The kit opens it on OpenVINO, and it answers as its FP32 graph does, within INT8 rounding."""
    import openvino as ov

    from toolchain.core.settings import QuantizeSettings
    from toolchain.quantize.quantize import quantize_artifact
    from toolchain.quantize.recipes import QuantizationError

    reduced = exported_root / ("fp32-" + REDUCED.replace(",", "-"))
    with pytest.raises(QuantizationError, match="take it with --no-tune"):  # tuning times recipes on onnxruntime
        quantize_artifact(reduced, tmp_path / "tuned", settings=QuantizeSettings(recipes=("static-openvino",)),
                          log=lambda _: None)
    assert not (tmp_path / "tuned").exists()
    settings = QuantizeSettings(samples=16, tune=False, recipes=("static-openvino",))
    int8 = quantize_artifact(reduced, tmp_path / "int8-reduced", settings=settings, log=lambda _: None)
    manifest = manifests.load(int8)
    assert manifest.engine == "openvino" and manifest.float_precision == "runtime-default"
    assert manifest.graph_passes is None and not manifest.runs_exactly
    ops = {(n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert ("ai.onnx", "DequantizeLinear") in ops and ("ai.onnx", "TopK") in ops  # INT8, and it still drops tokens
    # no fused operator only onnxruntime reads: export's Gelu (which OpenVINO reads) is the one contrib operator
    assert {op for domain, op in ops if domain != "ai.onnx"} == {"Gelu"}

    examples = squad.load_squad("dev", limit=12)
    pairs = [(e.question, e.context) for e in examples]
    on_openvino = Artifact.open(int8)  # the manifest's runtime
    default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    assert on_openvino.session.compiled.get_property("INFERENCE_PRECISION_HINT") == default
    fp32 = Artifact.open(reduced, engine="openvino")  # a graph without the record computes as stated
    assert fp32.session.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    same = sum(a.text == b.text for a, b in zip(on_openvino.answer_batch(pairs), Artifact.open(reduced).answer_batch(pairs)))
    assert same >= 9, same
