"""The per-layer latency model: its features, its fit, fitting it on real graphs, and search using it as the cost."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.cli.commands import main
from toolchain.core.errors import InputError
from toolchain.evaluate.latency import FEATURES, LatencyModel, _fit, features, layer_tokens
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
