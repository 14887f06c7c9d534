import pytest

from conftest import REDUCED
from toolchain import manifest as manifests
from toolchain import squad
from toolchain.quantize import (
    RECIPES_BY_NAME,
    QuantizationError,
    Recipe,
    calibration_examples,
    quantize_artifact,
    select_nodes,
    tuning_examples,
)

REDUCED_DIR = "fp32-" + REDUCED.replace(",", "-")


def test_shipped_calibration_set_is_offline_squad_train():
    examples = calibration_examples("squad", 1000)
    assert len(examples) == 300
    train_ids = {e.id for e in squad.load_squad("train")}
    assert {e.id for e in examples} <= train_ids
    with pytest.raises(FileNotFoundError):
        calibration_examples("nope.json", 10)


def test_tuning_slice_is_held_out_train():
    """Recipes are scored on SQuAD train questions that are neither calibration questions nor dev."""
    tune = tuning_examples(200, "squad")
    assert len(tune) == 200
    ids = {e.id for e in tune}
    assert ids <= {e.id for e in squad.load_squad("train", offset=87_000)}
    assert not ids & {e.id for e in calibration_examples("squad", 1000)}
    assert not ids & {e.id for e in squad.load_squad("dev")}


def test_recipes_select_weight_matmuls_by_recorded_role(exported_root):
    manifest = manifests.load(exported_root / REDUCED_DIR)
    assert {r: len(n) for r, n in manifest.roles.items()} == {
        "q": 6, "k": 6, "v": 6, "attn_out": 6, "ffn_in": 6, "ffn_out": 6, "head": 1}
    every = select_nodes(manifest, RECIPES_BY_NAME["static-all"])
    assert len(every) == 6 * 6 + 1
    kept = select_nodes(manifest, RECIPES_BY_NAME["static-fp32-ffn-out"])
    assert len(kept) == 6 * 5 + 1 and not set(kept) & set(manifest.roles["ffn_out"])
    assert len(select_nodes(manifest, RECIPES_BY_NAME["static-fp32-ffn-out-qk-head"])) == 6 * 3
    with pytest.raises(QuantizationError, match="role"):
        select_nodes(manifest, Recipe("bad", keep_fp32=("gate_proj",)))
    manifest.roles["head"] = []
    with pytest.raises(QuantizationError, match="match no node"):
        select_nodes(manifest, RECIPES_BY_NAME["static-all"])


@pytest.fixture(scope="module")
def int8_dir(exported_root):
    recipes = [RECIPES_BY_NAME[n] for n in ("static-all", "dynamic-all", "static-fp32-ffn-out")]
    return quantize_artifact(exported_root / REDUCED_DIR, samples=32, tune_questions=60, tolerance=5.0,
                             recipes=recipes, timing_batches=(1, 4), log=lambda _: None)


def test_quantize_picks_the_fastest_recipe_within_tolerance(int8_dir, exported_root):
    manifest = manifests.load(int8_dir)
    fp32 = manifests.load(exported_root / REDUCED_DIR)
    assert int8_dir.name == REDUCED_DIR.replace("fp32-", "int8-")
    quant = manifest.quantization
    assert manifest.precision == "int8" and "neural-compressor" in quant["tool"].lower()
    tuning = quant["tuning"]
    assert tuning["squad_file"] == "train" and tuning["protocols"] == ["unpadded", "bucketed"]
    trials = tuning["trials"]
    assert [t["recipe"] for t in trials] == ["static-all", "dynamic-all", "static-fp32-ffn-out"]
    eligible = [t for t in trials if t["f1_drop"] <= 5.0]
    assert eligible and all(t["within_tolerance"] == (t["f1_drop"] <= 5.0) for t in trials)
    speed = {t["recipe"]: (t["latency_ms"]["small"] * t["latency_ms"]["large"]) ** 0.5 for t in trials}
    assert quant["recipe"]["name"] == min(eligible, key=lambda t: speed[t["recipe"]])["recipe"]
    assert all(len(t["kept_agreement"]) == 6 for t in trials)
    for t in trials:  # the drop that counts is the worse protocol's
        drops = [tuning["fp32_f1"][p] - t["f1_by_protocol"][p] for p in tuning["protocols"]]
        assert t["f1_drop"] == pytest.approx(max(drops))
    static = next(t for t in trials if t["recipe"] == "static-all")  # static INT8 does not care about batch-mates
    assert static["f1_by_protocol"]["unpadded"] == pytest.approx(static["f1_by_protocol"]["bucketed"], abs=0.5)
    assert (int8_dir / "model.onnx").stat().st_size < 0.4 * (exported_root / REDUCED_DIR / "model.onnx").stat().st_size
    assert manifest.source_fp32["sha256"] == fp32.files["model.onnx"]
    assert manifest.interface == fp32.interface and manifest.length_config == fp32.length_config


def test_unreachable_tolerance_fails_and_writes_nothing(exported_root, tmp_path, monkeypatch):
    import toolchain.quantize as quantize_module

    dest = tmp_path / "int8"
    with pytest.raises(QuantizationError, match="tolerance must be >= 0"):
        quantize_artifact(exported_root / REDUCED_DIR, dest, tolerance=-1.0, log=lambda _: None)
    calls = []

    def fp32_scores_higher(examples, features, preds):  # the first two scores are the FP32 graph's (two protocols)
        calls.append(1)
        return {"f1": 80.0 if len(calls) <= 2 else 70.0, "exact_match": 0.0, "count": len(examples)}

    monkeypatch.setattr(quantize_module, "score", fp32_scores_higher)
    with pytest.raises(QuantizationError, match="no recipe kept F1 within 1.0 of FP32"):
        quantize_artifact(exported_root / REDUCED_DIR, dest, samples=8, tune_questions=10, tolerance=1.0,
                          recipes=[RECIPES_BY_NAME["dynamic-all"]], timing_batches=(1, 2), log=lambda _: None)
    assert len(calls) == 4
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_only_fp32_artifacts_are_quantized(int8_dir):
    with pytest.raises(QuantizationError, match="needs an FP32 artifact"):
        quantize_artifact(int8_dir, tolerance=None, log=lambda _: None)
