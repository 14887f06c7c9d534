from toolchain.model import LengthConfig
from toolchain.search import config_from_ratios, search_configs


def test_ratios_always_give_valid_configs():
    config = config_from_ratios([0.9, 0.5, 1.0, 0.01, 0.7, 0.7], 384)
    assert config.keep == (346, 173, 173, 2, 2, 2)
    config.validate(6)
    assert config_from_ratios([1.0] * 6, 384).is_full


def test_search_finds_a_front_anchored_at_the_full_model(trained_dir):
    result = search_configs(trained_dir, trials=5, questions=12, min_ratio=0.4, log=lambda _: None)
    rows = result["evaluated"]
    assert rows[0]["config"] == "full" and rows[0]["flops_ratio"] == 1.0
    assert 2 <= len(rows) <= 5
    front = result["pareto"]
    assert front == sorted(front, key=lambda r: r["flops_ratio"])
    for r in front:  # nothing evaluated beats a front member on both objectives
        assert not any(o["flops_ratio"] < r["flops_ratio"] and o["f1"] > r["f1"] for o in rows)
    for r in rows:
        if r["config"] != "full":
            LengthConfig.parse(r["config"], 6).validate(6)
            assert r["flops_ratio"] < 1.0
