"""The CLI end to end on real SQuAD slices: export -> quantize -> verify, and its errors."""

import json

from click.testing import CliRunner

from conftest import REDUCED
from toolchain import artifact
from toolchain.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_export_quantize_verify(trained_dir, tmp_path):
    root = tmp_path / "graphs" / "cli"
    result = run("export", "--model", trained_dir, "--config", REDUCED, "--out", root, "--samples", 4)
    assert result.exit_code == 0, result.output
    assert "kept agreement 1.000" in result.output
    result = run("quantize", root, "--samples", 16, "--no-tune", "--recipe", "fp32-ffn-out")
    assert result.exit_code == 0, result.output
    result = run("verify", root, "--limit", 30, "--batch-sizes", "1,2", "--runs", 2)
    assert result.exit_code == 0, result.output
    report = json.loads((root / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[0] == "pytorch-fp32-full" and report["questions"] == 30
    int8 = next(r for r in report["rows"] if r["precision"] == "int8")
    fp32 = next(r for r in report["rows"] if r["name"].startswith("fp32-"))
    assert int8["latency_b1_ms"] > 0 and len(int8["kept_agreement_vs_fp32"]) == 6
    assert abs(fp32["f1"] - report["rows"][0]["f1"]) < 30  # same model, same questions
    assert (root / "report.md").read_text().count("|") > 20 and (root / "pareto.png").stat().st_size > 10_000
    manifest = artifact.check_artifact(root / fp32["name"])  # metrics merged, hashes still valid
    assert manifest["metrics"]["f1"] == fp32["f1"] and manifest["metrics"]["questions"] == 30


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
    assert result.exit_code == 1 and "unknown recipe" in result.output
    assert run("--help").output.count("\n") > 5
