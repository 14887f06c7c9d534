import pytest

from conftest import REDUCED
from toolchain.core.settings import QuantizeSettings
from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.data.calibration_windows import calibration_examples
from toolchain.quantize.recipes import RECIPES_BY_NAME, QuantizationError, Recipe, recipes_for, select_nodes
from toolchain.quantize.quantize import STATIC_PREFERENCE, Trial, choose, quantize_artifact, speed, tuning_examples

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
    every = select_nodes(manifest, RECIPES_BY_NAME["static-fp32-out"])
    assert len(every) == 6 * 6 + 1
    kept = select_nodes(manifest, RECIPES_BY_NAME["static-fp32-out-ffn-out"])
    assert len(kept) == 6 * 5 + 1 and not set(kept) & set(manifest.roles["ffn_out"])
    with pytest.raises(QuantizationError, match="role"):
        select_nodes(manifest, Recipe("bad", keep_fp32=("gate_proj",)))
    manifest.roles["head"] = []
    with pytest.raises(QuantizationError, match="match no node"):
        select_nodes(manifest, RECIPES_BY_NAME["static-fp32-out"])


@pytest.fixture(scope="module")
def int8_dir(exported_root):
    recipes = ("static-fp32-out", "dynamic-all", "static-fp32-out-ffn-out")
    settings = QuantizeSettings(samples=32, tune_questions=60, tolerance=5.0, recipes=recipes, timing_batches=(1, 4))
    return quantize_artifact(exported_root / REDUCED_DIR, settings=settings, log=lambda _: None)


@pytest.mark.slow
def test_quantize_picks_the_fastest_recipe_within_tolerance(int8_dir, exported_root):
    manifest = manifests.load(int8_dir)
    fp32 = manifests.load(exported_root / REDUCED_DIR)
    assert int8_dir.name == REDUCED_DIR.replace("fp32-", "int8-")
    quant = manifest.quantization
    assert manifest.precision == "int8" and "neural-compressor" in quant["tool"].lower()
    tuning = quant["tuning"]
    assert tuning["squad_file"] == "train" and tuning["protocols"] == ["unpadded", "bucketed"]
    trials = tuning["trials"]
    assert [t["recipe"] for t in trials] == ["static-fp32-out", "dynamic-all", "static-fp32-out-ffn-out"]
    eligible = [t for t in trials if t["f1_drop"] <= 5.0]
    assert eligible and all(t["within_tolerance"] == (t["f1_drop"] <= 5.0) for t in trials)
    as_trials = [Trial(**t) for t in trials]
    assert quant["recipe"]["name"] == choose(as_trials, RECIPES_BY_NAME, 5.0).recipe
    assert all(len(t["kept_agreement"]) == 6 for t in trials)
    for t in trials:  # the drop that counts is the worse protocol's
        drops = [tuning["fp32_f1"][p] - t["f1_by_protocol"][p] for p in tuning["protocols"]]
        assert t["f1_drop"] == pytest.approx(max(drops))
    # static INT8 does not care about batch-mates: at most one question of the slice flips. The FP32 ops between the
    # INT8 MatMuls (softmax, LayerNorm) sum over the padded width, so a near-tie can round to another INT8 step (seen
    # on AVX-512 VNNI, identically before and after the run-time graph change; never on AVX2)
    one_question = 100.0 / tuning["questions"] + 1e-6
    for name in ("static-fp32-out", "static-fp32-out-ffn-out"):
        static = next(t for t in trials if t["recipe"] == name)
        assert static["f1_by_protocol"]["unpadded"] == pytest.approx(static["f1_by_protocol"]["bucketed"], abs=one_question)
    assert (int8_dir / "model.onnx").stat().st_size < 0.4 * (exported_root / REDUCED_DIR / "model.onnx").stat().st_size
    assert manifest.source_fp32["sha256"] == fp32.files["model.onnx"]
    assert manifest.interface == fp32.interface and manifest.length_config == fp32.length_config


def test_unreachable_tolerance_fails_and_writes_nothing(exported_root, tmp_path, monkeypatch):
    import toolchain.quantize.quantize as quantize_module

    dest = tmp_path / "int8"
    with pytest.raises(QuantizationError, match="tolerance must be >= 0"):
        quantize_artifact(exported_root / REDUCED_DIR, dest, QuantizeSettings(tolerance=-1.0), log=lambda _: None)
    calls = []

    def fp32_scores_higher(examples, features, preds):  # the first two scores are the FP32 graph's (two protocols)
        calls.append(1)
        return {"f1": 80.0 if len(calls) <= 2 else 70.0, "exact_match": 0.0, "count": len(examples)}

    monkeypatch.setattr(quantize_module, "score", fp32_scores_higher)
    with pytest.raises(QuantizationError, match="no recipe kept F1 within 1.0 of FP32"):
        quantize_artifact(exported_root / REDUCED_DIR, dest, QuantizeSettings(samples=8, tune_questions=10, tolerance=1.0,
                          recipes=("dynamic-all",), timing_batches=(1, 2)), log=lambda _: None)
    assert len(calls) == 4
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_only_fp32_artifacts_are_quantized(int8_dir):
    with pytest.raises(QuantizationError, match="needs an FP32 artifact"):
        quantize_artifact(int8_dir, settings=QuantizeSettings(tune=False), log=lambda _: None)


def _trial(name: str, ms: float, drop: float = 0.0) -> Trial:
    return Trial(name, "", 70.0 - drop, 0.0, drop, 1, latency_ms={"small": ms, "large": ms}, within_tolerance=drop <= 1.0)


def test_retired_recipes_are_refused_with_why(exported_root, tmp_path):
    """Percentile and entropy calibration never reached our activations (neural-compressor keyed the method on the
    producing node); their names are refused in one line before any work, by the CLI and the function alike."""
    from click.testing import CliRunner

    from toolchain.cli.commands import main

    before = sorted(p.name for p in exported_root.iterdir())
    for name in ("static-fp32-out-pct", "static-fp32-out-entropy"):
        with pytest.raises(QuantizationError, match=f"recipe {name} is retired: .*MinMax.*use static-fp32-out"):
            recipes_for((name,), tune=False)
        result = CliRunner().invoke(main, ["quantize", str(exported_root / REDUCED_DIR), "--recipe", name])
        assert result.exit_code == 2 and f"recipe {name} is retired" in result.output
    assert sorted(p.name for p in exported_root.iterdir()) == before
    assert all(r.calibration == "minmax" for r in RECIPES_BY_NAME.values())


def test_choose_prefers_static_unless_measurably_slower():
    recipes = RECIPES_BY_NAME
    close = [_trial("dynamic-all-pc", 10.0), _trial("static-fp32-out", 10.0 * STATIC_PREFERENCE * 0.99)]
    assert choose(close, recipes, 1.0).recipe == "static-fp32-out"  # within timing noise: static wins
    slower = [_trial("dynamic-all-pc", 10.0), _trial("static-fp32-out", 10.0 * STATIC_PREFERENCE * 1.02)]
    assert choose(slower, recipes, 1.0).recipe == "dynamic-all-pc"
    lossy = [_trial("dynamic-all-pc", 10.0), _trial("static-fp32-out", 9.0, drop=2.0)]
    assert choose(lossy, recipes, 1.0).recipe == "dynamic-all-pc"  # outside tolerance never wins
    assert speed(lossy[1]) == 9.0
    with pytest.raises(QuantizationError, match="best was static-fp32-out"):
        choose([_trial("static-fp32-out", 9.0, drop=2.0)], recipes, 1.0)


def test_static_recipe_leaves_matmul_outputs_fp32_and_records_what_it_did(int8_dir, exported_root):
    """The chosen graph is checked for what its manifest says: static graphs run MatMulIntegerToFloat (U8 inputs,
    FP32 outputs, bias inside), never QLinearMatMul; the record names calibration, tensors and the per-tensor drift
    (every role, though the bias Adds are gone from the INT8 graph)."""
    import onnx

    path = quantize_artifact(exported_root / REDUCED_DIR, exported_root.parent / "int8-static",
                             QuantizeSettings(samples=16, tune=False, recipes=("static-fp32-out",)), log=lambda _: None)
    manifest = manifests.load(path)
    nodes = onnx.load(str(path / "model.onnx"), load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("MatMulIntegerToFloat") == 6 * 6 + 1 and "QLinearMatMul" not in ops
    # the graph passes ran: each GEMM adds its own bias, one Gelu per layer replaces the written-out erf form
    assert all(len(n.input) == 7 and n.input[6] for n in nodes if n.op_type == "MatMulIntegerToFloat")
    assert ops.count("Gelu") == 6 and "Erf" not in ops
    quant = manifest.quantization
    assert quant["mode"] == "static" and quant["batchable"] and manifest.feeding == {"batchable": True, "pad_to_seq_len": False}
    assert quant["calibration"]["set"] == "squad" and quant["calibration"]["method"] == "minmax"
    assert quant["calibration"]["windows"] == 16 and len(quant["quantized"]["nodes"]) == 6 * 6 + 1
    drift = quant["drift"]
    errors = [r["rel_error"] for r in drift["worst"]]
    assert drift["windows"] == 16 and errors == sorted(errors, reverse=True) and 0 < errors[0] < 1
    assert set(drift["added_by_role"]) == {"q", "k", "v", "attn_out", "ffn_in", "ffn_out", "head"}
    dynamic = manifests.load(int8_dir) if manifests.load(int8_dir).quantization["mode"] == "dynamic" else None
    if dynamic is not None:
        assert dynamic.feeding["batchable"] is False


def test_drift_of_a_graph_against_itself_is_zero(exported_root):
    from toolchain.quantize.drift import tensor_drift

    folder = exported_root / REDUCED_DIR
    manifest = manifests.load(folder)
    import numpy as np

    feed = {"input_ids": np.array([[101, 2054, 2003, 102, 3000, 2001, 1037, 2103, 102]]),
            "attention_mask": np.ones((1, 9), dtype=np.int64), "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1]])}
    rows = tensor_drift(folder / "model.onnx", folder / "model.onnx", manifest.roles, [feed])
    assert len(rows) == 2 * (6 * 6 + 1) and all(r.rel_error == 0.0 for r in rows)


def test_document_calibration_mixes_paragraph_and_widened_windows(minilm_tokenizer, squad_dir):
    """--calib-neighbours: half the calibration windows come from contexts widened with neighbouring paragraphs
    (full windows of running text); tuning stays held out from the calibration questions actually read."""
    from toolchain.data.calibration_windows import calibration_features

    train = str(squad_dir / "train-v1.1.json")
    plain = calibration_features(train, 32, minilm_tokenizer, 384, 128)
    mixed = calibration_features(train, 32, minilm_tokenizer, 384, 128, neighbours=2)
    assert len(plain) == len(mixed) == 32
    np = pytest.importorskip("numpy")
    np.testing.assert_array_equal(mixed.input_ids[:16], plain.input_ids[:16])  # the paragraph half is unchanged
    wide = mixed.attention_mask[16:].sum(1)
    assert (wide == 384).mean() > 0.5 and wide.mean() > plain.attention_mask.sum(1).mean()
    tune = tuning_examples(20, train, 32)
    assert len(tune) == 20 and not {e.id for e in tune} & {e.id for e in squad.load_squad(train, limit=32)}


def test_drift_reads_answer_ranking_heads_on_the_rows_their_layer_received(answer_graph):
    """An `answer` graph runs the QA head once per dropping layer, on that layer's rows in ranked order. Two graphs
    rank differently, so those rows are compared token by token: by the `kept_i` of the layer before (none at the
    first layer, which receives the window in order); the final head reads restored rows, in order."""
    import numpy as np

    from toolchain.quantize.drift import _rows_from, _watched, tensor_drift

    folder = answer_graph
    manifest = manifests.load(folder)
    heads = manifest.roles["head"]
    assert len(heads) == 6 + 1
    kept = [f"kept_{i}" for i in range(6)]
    placed = {node: _rows_from(where, role, kept)
              for _, node, role, side, where in _watched(folder / "model.onnx", manifest.roles)
              if role == "head" and side == "input"}
    assert [placed[h] for h in heads] == [None, "kept_0", "kept_1", "kept_2", "kept_3", "kept_4", None]
    feed = {"input_ids": np.array([[101, 2054, 2003, 102, 3000, 2001, 1037, 2103, 102]]),
            "attention_mask": np.ones((1, 9), dtype=np.int64), "token_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1]])}
    rows = tensor_drift(folder / "model.onnx", folder / "model.onnx", manifest.roles, [feed])
    assert len(rows) == 2 * (6 * 6 + 7) and all(r.rel_error == 0.0 for r in rows)
