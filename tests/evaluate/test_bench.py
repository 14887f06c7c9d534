"""What one `qtool bench` run writes, and what reads it: the peers it builds and measures beside qtool's graphs, and
the latency model fitted on its graphs. Every test that needs a bench run is in this file, so that under
`pytest -n --dist loadfile` one worker builds it and no other waits for it."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.artifact import manifest as manifests
from toolchain.cli.commands import main
from toolchain.core.errors import InputError
from toolchain.core.length import LengthConfig
from toolchain.core.settings import BenchSettings, QuantizeSettings, VerifySettings
from toolchain.evaluate.bench import run_bench
from toolchain.evaluate.latency import LatencyModel, fit_latency_model
from toolchain.evaluate.peers import PEERS

OPENVINO_PEER = PEERS["openvino"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, trained_dir) -> tuple[Path, dict]:
    """`run_bench` on the trained model at one reduced configuration (a 12-question dev slice): our FP32 and
    INT8 graphs and the standard recipe's three graphs, with the report."""
    root = tmp_path_factory.mktemp("bench") / "bench"
    verify = VerifySettings(limit=12, batch_sizes=(1, 2), rounds=1, workload_windows=4)
    quantize = QuantizeSettings(samples=8, tune_questions=20, tolerance=100.0, recipes=("dynamic-all",),
                                timing_batches=(1, 2))
    report = run_bench(trained_dir, [REDUCED], root, verify, BenchSettings(quantize=quantize, plain_ort=False),
                       log=lambda _: None)
    return root, report


@pytest.mark.slow
def test_bench_measures_qtool_against_the_standard_recipe(bench_run):
    """bench builds the standard recipe (optimum export, fusions, dynamic INT8) from the same checkpoint."""
    root, report = bench_run
    rows = {r["name"]: r for r in report["rows"]}
    assert {"std-fp32-optimum", "std-fp32-o2", "std-int8-o2-dynamic"} <= set(rows)
    assert report["baseline"] == "std-int8-o2-dynamic"
    std = rows["std-int8-o2-dynamic"]
    assert std["kind"] == "standard" and std["speedup_vs_std"]["real_b1"] == pytest.approx(1.0)
    # the standard recipe's FP32 export answers like qtool's FP32 full graph (same weights)
    assert abs(rows["std-fp32-optimum"]["f1_unpadded"] - rows["fp32-full"]["f1_unpadded"]) < 1e-6
    ops = {n.op_type for n in onnx.load(str(root / "std-int8-o2-dynamic" / "model.onnx")).graph.node}
    assert "QAttention" in ops
    # the standard graphs name the checkpoint they came from, as qtool's do (not optimum's scratch folder)
    assert manifests.load(root / "std-int8-o2-dynamic").source_model == manifests.load(root / "fp32-full").source_model
    ours = rows["int8-" + REDUCED.replace(",", "-")]
    assert set(ours["speedup_vs_std"]) == {"b1@384", "b2@384", "real_b1", "real_b32"}


def test_bench_builds_and_measures_the_openvino_peer(bench_run):
    root, report = bench_run
    rows = {r["name"]: r for r in report["rows"]}
    peer, plain = rows[OPENVINO_PEER], rows["std-fp32-optimum"]
    manifest = manifests.load(root / OPENVINO_PEER)
    assert manifest.engine == "openvino" and peer["runtime"] == "openvino" and manifest.kind == "standard"
    assert manifest.quantization["calibration"]["windows"] == 8  # bench's --calib-samples, as qtool's recipes
    graph = onnx.load(str(root / OPENVINO_PEER / "model.onnx"))
    ops = {(n.domain, n.op_type) for n in graph.graph.node}
    assert ("", "QuantizeLinear") in ops and ("", "MatMul") in ops  # standard QDQ, nothing onnxruntime-only
    assert not {d for d, _ in ops} - {"", "ai.onnx"}
    # a real INT8 model: it answers about as well as the FP32 export it came from (12 questions)
    assert peer["f1_unpadded"] > plain["f1_unpadded"] - 10
    # speed is measured against the faster peer in every column
    ours = rows["int8-" + REDUCED.replace(",", "-")]
    peers = [rows[name] for name in PEERS.values()]
    for key, ratio in ours["speedup_vs_best_peer"].items():
        assert ratio == pytest.approx(min(p["latency_ms"][key] for p in peers) / ours["latency_ms"][key])
    assert ours["f1_vs_best_peer"]["unpadded"] == pytest.approx(
        ours["f1_unpadded"] - max(p["f1_unpadded"] for p in peers))
    # F1 by lexical-overlap third, the thirds' cut shares in the report
    assert set(peer["f1_by_overlap_unpadded"]) == {"low", "middle", "high"}
    assert list(report["overlap_thirds"]["begin"]) == ["middle", "high"]


@pytest.fixture(scope="module")
def latency_graphs(bench_run, tmp_path_factory):
    """The bench folder (FP32 and INT8 reduced, the standard recipe) plus an INT8 full graph."""
    from toolchain.core.settings import QuantizeSettings
    from toolchain.quantize.quantize import quantize_artifact

    root, _ = bench_run
    extra = tmp_path_factory.mktemp("latency")
    shutil.copytree(root / "fp32-full", extra / "fp32-full")
    quantize_artifact(extra / "fp32-full", settings=QuantizeSettings(samples=8, tune=False, recipes=("dynamic-all",)),
                      log=lambda _: None)
    return root, extra / "int8-full"


@pytest.mark.slow
def test_fit_on_real_graphs_and_search_with_it(latency_graphs, trained_dir, tmp_path):
    root, int8_full = latency_graphs
    out = tmp_path / "latency.json"
    result = CliRunner().invoke(main, ["fit-latency", str(root), str(int8_full), "--out", str(out),
                                       "--lengths", "64,192,384", "--rounds", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = LatencyModel.load(out)
    # the INT8 qtool graphs are fitted, FP32 ones skipped; the standard recipe's INT8 graph is the reference
    assert model.graphs == sorted(["int8-full", "int8-" + REDUCED.replace(",", "-")])
    assert model.baseline_graph == "std-int8-o2-dynamic" and model.reference == "the standard recipe's INT8 graph"
    assert len(model.points) == 3 * 3 and all(p["ms"] > 0 for p in model.points)
    assert model.machine["cpu"]
    # the recorded predictions are the model's own, and its recorded error is theirs against the measured points
    ours = [p for p in model.points if p["config"] != "standard"]
    for p in ours:
        config = LengthConfig.full(6) if p["config"] == "full" else LengthConfig.parse(p["config"], 6)
        assert model.predict_ms(config, p["length"]) == pytest.approx(p["predicted_ms"], abs=1e-3)
    errors = [abs(p["predicted_ms"] - p["ms"]) / p["ms"] for p in ours]
    assert model.fit_error["median_relative"] == pytest.approx(float(np.median(errors)), abs=1e-3)
    assert all(v >= 0 for v in model.coefficients.values())
    full = LengthConfig.full(6)
    assert model.predict_ms(full, 384) > model.predict_ms(full, 64)

    found = tmp_path / "front.json"
    result = CliRunner().invoke(main, ["search", "--model", str(trained_dir), "--trials", "3", "--questions", "6",
                                       "--min-ratio", "0.5", "--latency-model", str(out), "--out", str(found)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(found.read_text())
    assert "latency" in report["objective"]["minimize"] and "standard recipe" in report["objective"]["minimize"]
    for row in report["evaluated"]:
        assert row["cost"] == row["latency"] and row["macs_unpadded"] <= 1.0
    assert report["evaluated"][0]["latency"] == pytest.approx(
        model.cost(full, _search_lengths(trained_dir, 6)), rel=1e-9)

    # --route: every candidate routed at its predicted crossover, scored and priced that way
    routed_out = tmp_path / "routed.json"
    result = CliRunner().invoke(main, ["search", "--model", str(trained_dir), "--trials", "3", "--questions", "6",
                                       "--min-ratio", "0.5", "--latency-model", str(out), "--route",
                                       "--start-from", REDUCED, "--out", str(routed_out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    routed_report = json.loads(routed_out.read_text())
    assert "routed" in routed_report["objective"]["maximize"]
    lengths = _search_lengths(trained_dir, 6)
    by_config = {row["config"]: row for row in routed_report["evaluated"]}
    plain = next(r for r in report["evaluated"] if r["config"] == "full")
    assert by_config["full"]["f1"] == plain["f1"] and "full_up_to" not in by_config["full"]
    reduced = by_config[REDUCED]
    config = model.routed(LengthConfig.parse(REDUCED, 6))
    assert reduced.get("full_up_to", 0) == config.full_up_to
    assert reduced["latency"] == pytest.approx(model.cost(config, lengths), rel=1e-9)
    if config.full_up_to >= lengths.max():  # every window routed to the full model: its answers exactly
        assert reduced["f1_by_workload"] == by_config["full"]["f1_by_workload"]


def _search_lengths(model_dir, questions):
    from transformers import AutoTokenizer

    from toolchain.data import squad
    from toolchain.data.splits import search_examples, trained_questions

    import numpy as np

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    # the search's cost covers every window of its mix: the questions' paragraphs and the same questions as documents,
    # less the questions the model's training saw
    seen = trained_questions(model_dir)
    return np.concatenate([squad.featurize(search_examples(questions, neighbours=n, exclude=seen), tok).attention_mask.sum(1)
                           for n in (0, squad.DOCUMENT_NEIGHBOURS)])


def test_fit_refuses_what_cannot_be_fitted(bench_run, trained_dir, tmp_path):
    root, _ = bench_run
    reduced_int8 = root / ("int8-" + REDUCED.replace(",", "-"))
    with pytest.raises(InputError, match="at least two qtool configurations"):
        fit_latency_model([reduced_int8, root / "std-int8-o2-dynamic"], log=lambda _: None)
    with pytest.raises(InputError, match="no qtool int8 graph"):
        fit_latency_model([root / "fp32-full"], log=lambda _: None)
