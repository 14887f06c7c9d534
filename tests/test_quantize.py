import pytest

from conftest import REDUCED
from toolchain import artifact, squad
from toolchain.quantize import (
    RECIPES_BY_NAME,
    QuantizationError,
    Recipe,
    calibration_examples,
    quantize_artifact,
    select_nodes,
    weight_matmuls,
)

REDUCED_DIR = "fp32-" + REDUCED.replace(",", "-")


def test_shipped_calibration_set_is_offline_squad_train():
    examples = calibration_examples("squad", 1000)
    assert len(examples) == 300
    train_ids = {e.id for e in squad.load_squad("train")}
    assert {e.id for e in examples} <= train_ids
    with pytest.raises(FileNotFoundError):
        calibration_examples("nope.json", 10)


def test_recipes_select_weight_matmuls_by_role(exported_root):
    names = weight_matmuls(exported_root / REDUCED_DIR / "model.onnx")
    assert len(names) == 6 * 6 + 1  # Q, K, V, attention out, FFN in, FFN out per layer + QA head
    kept = select_nodes(names, RECIPES_BY_NAME["fp32-ffn-out"])
    assert len(kept) == 6 * 5 + 1 and not any(".output.dense/" in n and "attention" not in n for n in kept)
    assert len(select_nodes(names, RECIPES_BY_NAME["fp32-ffn-out-qk-head"])) == 6 * 3


@pytest.fixture(scope="module")
def int8_dir(exported_root):
    return quantize_artifact(exported_root / REDUCED_DIR, samples=32, eval_questions=60, tolerance=5.0,
                             log=lambda _: None)


def test_quantize_is_accuracy_aware(int8_dir, exported_root):
    manifest = artifact.check_artifact(int8_dir)
    assert int8_dir.name == REDUCED_DIR.replace("fp32-", "int8-")
    quant = manifest["quantization"]
    assert manifest["precision"] == "int8" and "neural-compressor" in quant["tool"].lower()
    trials = quant["tuning"]["trials"]
    assert trials and trials[-1]["recipe"] == quant["recipe"]["name"]
    assert trials[-1]["f1_drop"] <= 5.0  # the chosen recipe met the tolerance
    assert all(t["f1_drop"] > 5.0 for t in trials[:-1])  # the ones before it did not
    assert len(trials[-1]["kept_agreement"]) == 6
    fp32_size = (exported_root / REDUCED_DIR / "model.onnx").stat().st_size
    assert (int8_dir / "model.onnx").stat().st_size < 0.8 * fp32_size
    assert manifest["source_fp32"]["sha256"] == artifact.read_manifest(exported_root / REDUCED_DIR)["files"]["model.onnx"]


def test_unreachable_tolerance_fails_and_writes_nothing(exported_root, tmp_path):
    dest = tmp_path / "int8"
    with pytest.raises(QuantizationError, match="no recipe kept F1 within"):
        quantize_artifact(exported_root / REDUCED_DIR, dest, samples=8, eval_questions=20, tolerance=-50.0,
                          recipes=[Recipe("all-linear")], log=lambda _: None)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_only_fp32_artifacts_are_quantized(int8_dir):
    with pytest.raises(QuantizationError, match="needs an FP32 artifact"):
        quantize_artifact(int8_dir, tolerance=None, log=lambda _: None)
