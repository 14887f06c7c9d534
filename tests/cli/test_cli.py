"""The CLI end to end on real SQuAD slices: export -> quantize -> verify, errors. (bench: tests/evaluate/test_bench.py)"""

import json

import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.artifact import manifest as manifests
from toolchain.cli.commands import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_export_quantize_verify(trained_dir, tmp_path):
    root = tmp_path / "graphs" / "cli"
    result = run("export", "--model", trained_dir, "--config", REDUCED, "--out", root, "--samples", 4)
    assert result.exit_code == 0, result.output
    assert "kept agreement 1.000" in result.output
    result = run("quantize", root, "--samples", 16, "--no-tune")  # no --recipe: the measured default
    assert result.exit_code == 0, result.output
    from toolchain.quantize.recipes import DEFAULT_RECIPE

    int8 = manifests.load(next(p for p in root.iterdir() if p.name.startswith("int8-")))
    assert int8.quantization["recipe"]["name"] == DEFAULT_RECIPE
    # each manifest records what its graph passes rewrote: six layers, six GELUs fused at export; every INT8 GEMM's bias
    fp32_manifest = manifests.load(next(p for p in root.iterdir() if p.name.startswith("fp32-")))
    assert fp32_manifest.graph_passes["fuse-gelu"] == 6
    assert int8.graph_passes["fuse-matmul-bias"] >= 6 * 6  # Q, K, V, attention out, FFN in and out per layer
    for limit in (4, 30):  # verifying twice works: verify never writes inside an artifact
        result = run("verify", root, "--limit", limit, "--batch-sizes", "1,2", "--rounds", 1, "--workload", 6)
        assert result.exit_code == 0, result.output
    report = json.loads((root / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[0] == "pytorch-fp32-full" and report["questions"] == 30
    assert report["machine"]["cpu"] and report["machine"]["threads"] >= 1
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert report["commit"] == head and report["models"] == [str(trained_dir)]  # which code and model made it
    int8 = next(r for r in report["rows"] if r["precision"] == "int8")
    fp32 = next(r for r in report["rows"] if r["name"].startswith("fp32-"))
    assert int8["fp32_twin"] == fp32["name"] and len(int8["kept_agreement_vs_fp32"]) == 6
    assert set(int8["latency_ms"]) == {"b1@384", "b2@384", "real_b1", "real_b32"}
    assert set(int8["int8_cost_f1"]) == {"padded", "unpadded", "bucketed"}
    # the default recipe is static: verify runs every protocol on it and the answers agree (one flip at most)
    assert int8["recipe"] == "static-fp32-out" and int8["batchable"] and int8["f1_spread"] < 3.4
    # cap rule: the FP32 reduced graph answers the same padded or not
    assert abs(fp32["f1_padded"] - fp32["f1_unpadded"]) < 0.5
    assert (root / "report.md").read_text().count("|") > 20 and (root / "pareto.png").stat().st_size > 10_000
    for folder in root.iterdir():
        if folder.is_dir():
            manifest = manifests.load(folder)  # still intact
            assert not {"report.json", "report.md", "pareto.png"} & set(manifest.files)
    single = root / fp32["name"]
    result = run("verify", single, "--limit", 5, "--rounds", 1, "--workload", 2, "--torch-configs", "none",
                 "--protocol", "unpadded")
    assert result.exit_code == 0, result.output
    assert not (single / "report.json").exists() and f"report: {root / 'report.md'}" in result.output
    only = json.loads((root / "report.json").read_text())
    assert only["protocols"] == ["unpadded"] and "f1_padded" not in only["rows"][0]


def test_bad_input_gives_clear_errors(trained_dir, tmp_path):
    result = run("export", "--model", trained_dir, "--config", "300,350,1,1,1,1", "--out", tmp_path / "g")
    assert result.exit_code == 1 and "increases at layer 1" in result.output
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
    result = run("export", "--model", tmp_path / "missing", "--config", "full", "--out", tmp_path / "g")
    assert result.exit_code == 1 and "no config.json" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("verify", empty)
    assert result.exit_code == 1 and "holds no qtool artifacts" in result.output
    result = run("quantize", empty, "--recipe", "bogus")
    assert result.exit_code == 2 and "unknown recipe" in result.output
    for args in (("eval", "--model", trained_dir, "--limit", 0), ("verify", empty, "--rounds", -1),
                 ("quantize", empty, "--samples", 0), ("search", "--model", trained_dir, "--trials", 0),
                 ("train", "--base", "minilm", "--out", tmp_path / "t", "--batch-size", 0)):
        result = run(*args)
        assert result.exit_code == 2 and "Invalid value" in result.output, (args, result.output)
    result = run("eval", "--model", trained_dir, "--squad", "dev", "--limit", 5, "--seq-len", 2000)
    assert result.exit_code != 0
    assert run("--help").output.count("\n") > 5
