"""The per-layer latency model: its features, its fit, fitting it on real graphs, and search using it as the cost."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.cli.commands import main
from toolchain.core.errors import InputError
from toolchain.evaluate.latency import FEATURES, LatencyModel, _fit, features, fit_latency_model, layer_tokens
from toolchain.core.length import LengthConfig
from toolchain.core.settings import SearchSettings


def test_layer_tokens_follow_the_length_rule_and_skips():
    cap = LengthConfig.parse("315,251,skip,159,142,33", 6)
    assert layer_tokens(cap, 384) == [(384, 315), (315, 251), (251, 159), (159, 142), (142, 33)]
    assert layer_tokens(cap, 200) == [(200, 200), (200, 200), (200, 159), (159, 142), (142, 33)]
    full = LengthConfig.full(6)
    assert layer_tokens(full, 100) == [(100, 100)] * 6
    # no drops in the full graph; projections see every layer's input, attention its square
    assert features(full, 100).tolist() == [1, 0, 100, 600, 60_000, 600]
    assert features(cap, 384)[1] == 5


def test_fit_recovers_known_per_token_costs():
    """Times made from known coefficients are fitted back exactly (the features tell the terms apart)."""
    truth = np.array([0.5, 0.2, 0.01, 0.03, 0.0001, 0.05])
    configs = [LengthConfig.full(6), LengthConfig.parse(REDUCED, 6), LengthConfig.parse("200,150,100,80,60,40", 6)]
    x = np.stack([features(c, n) for c in configs for n in (64, 128, 192, 256, 320, 384)])
    coef = _fit(x, x @ truth)
    assert coef == pytest.approx(truth, rel=1e-4, abs=1e-7)


def _model(baseline):
    coefficients = dict(zip(FEATURES, (0.5, 0.2, 0.01, 0.03, 0.0001, 0.05)))
    return LatencyModel(layers=6, coefficients=coefficients, baseline=baseline, machine={"cpu": "test"},
                        graphs=["a", "b"], baseline_graph=None)


def test_cost_is_relative_to_the_standard_graph_or_our_full_graph(tmp_path):
    lengths = np.array([120, 160, 160, 384])
    reduced = LengthConfig.parse(REDUCED, 6)
    own = _model(None)
    assert own.cost(LengthConfig.full(6), lengths) == pytest.approx(1.0)
    assert 0 < own.cost(reduced, lengths) < 1.0
    against_std = _model({"constant": 1.0, "tokens": 0.1, "tokens_squared": 1e-4})
    expected = sum(against_std.predict_ms(reduced, n) for n in lengths) / sum(against_std.baseline_ms(n) for n in lengths)
    assert against_std.cost(reduced, lengths) == pytest.approx(expected)
    path = against_std.save(tmp_path / "latency.json")
    assert LatencyModel.load(path).cost(reduced, lengths) == pytest.approx(expected)
    with pytest.raises(InputError, match="6-layer"):
        own.cost(LengthConfig.parse("100,50", 2), lengths)
    (tmp_path / "bad.json").write_text(json.dumps({"layers": 6}))
    with pytest.raises(InputError, match="not a latency model"):
        LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="does not exist"):
        LatencyModel.load(tmp_path / "missing.json")


def test_a_routed_configuration_is_priced_as_route_ships_it():
    """routed() applies route's rule (Crossover) to predicted times; a routed configuration is priced as the full
    one at or below its threshold and as itself above it, so its cost counts the windows routing sends to full."""
    from toolchain.core.crossover import Crossover, timed_widths

    model = _model(None)
    model.coefficients["drops"] = 1.0  # a ms per dropping layer (sort, gathers): short windows are cheaper unreduced
    config = LengthConfig.parse("315,251,242,159,142,33", 6, variant="match")
    full = LengthConfig.full(6, variant="match")
    routed = model.routed(config)
    widths = timed_widths(384)
    threshold = Crossover(widths, tuple(model.predict_ms(full, w) for w in widths),
                          tuple(model.predict_ms(config, w) for w in widths)).full_up_to
    assert routed.full_up_to == threshold and 0 < threshold < 384 and routed.keep == config.keep
    assert model.predict_ms(routed, threshold) == model.predict_ms(full, threshold) < model.predict_ms(config, threshold)
    assert model.predict_ms(routed, 384) == model.predict_ms(config, 384) < model.predict_ms(full, 384)
    lengths = np.array([120, 160, 300, 384])
    assert model.cost(routed, lengths) < min(model.cost(config, lengths), model.cost(full, lengths))
    assert model.routed(full) == full
    free_drops = LatencyModel(**{**model.__dict__, "coefficients": {**model.coefficients, "drops": 0.0}})
    assert free_drops.routed(config).full_up_to == 0  # faster everywhere: nothing to route


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


def test_a_study_keeps_one_cost(trained_dir, tmp_path):
    """Resuming a stored study with another cost would mix incomparable trials: refused."""
    from toolchain.search.run import search_configs

    storage = str(tmp_path / "study.journal")
    search_configs(trained_dir, SearchSettings(trials=1, questions=4, storage=storage), log=lambda _: None)
    _model(None).save(tmp_path / "latency.json")
    with pytest.raises(InputError, match="other settings \\(cost\\)"):
        search_configs(trained_dir, SearchSettings(trials=2, questions=4, storage=storage,
                                                   latency_model=tmp_path / "latency.json"), log=lambda _: None)


def test_standard_command_refuses_a_folder_that_is_no_model(tmp_path):
    result = CliRunner().invoke(main, ["standard", "--model", str(tmp_path), "--out", str(tmp_path / "std")])
    assert result.exit_code == 1 and "no config.json" in result.output and not (tmp_path / "std").exists()
