import numpy as np
import optuna
import pytest

from toolchain.data import squad
from toolchain.core.errors import InputError
from toolchain.core.length import LengthConfig
from toolchain.data.splits import search_examples
from toolchain.search.recommend import confirmation_candidates, recommend
from toolchain.search.run import search_configs
from toolchain.search.samplers import EvolutionSampler
from toolchain.search.scoring import paired_interval
from toolchain.search.space import config_from_ratios, macs_ratio_at_lengths, ratios_of, trained_space
from toolchain.core.settings import SearchSettings


def test_ratios_always_give_valid_configs():
    config = config_from_ratios([0.9, 0.5, 1.0, 0.01, 0.7, 0.7], 384)
    assert config.keep == (346, 173, 173, 2, 2, 2) and config.rule == "cap"
    config.validate(6)
    assert config_from_ratios([1.0] * 6, 384).is_full


@pytest.mark.parametrize("text", ["315,251,242,159,142,33", "384,384,300,299,1,1", "full", "255,201,142,94,54,40"])
def test_a_configuration_round_trips_through_trial_ratios(text):
    """--start-from enqueues a configuration as ratios; the trial must rebuild exactly that configuration."""
    config = LengthConfig.parse(text, 6, variant="match")
    ratios = ratios_of(config)
    assert list(ratios) == [f"r{i}" for i in range(6)] and all(0 < r <= 1 for r in ratios.values())
    assert config_from_ratios(list(ratios.values()), 384, variant="match") == config


def test_confirmation_candidates_are_the_full_model_and_the_cheapest_near_the_bar():
    def row(config, cost, paragraphs, documents):
        return {"config": config, "cost": cost, "f1": (paragraphs + documents) / 2,
                "f1_by_workload": {"paragraphs": paragraphs, "documents": documents}}

    full = row("full", 0.9, 71.8, 62.8)
    near = row("255,201,142,94,54,40", 0.57, 71.6, 63.5)  # within the tolerance on the search slice
    close = row("187,137,93,90,90,51", 0.53, 70.3, 63.5)  # 1.5 below on paragraphs: within the margin
    far = row("173,144,86,59,16,12", 0.52, 59.3, 55.9)  # on the front, far below the bar
    dominated = row("315,251,242,159,142,33", 0.66, 71.5, 62.6)  # near the bar; dominated only by a lucky slice
    rows = [full, near, close, far, dominated]
    assert [r["config"] for r in confirmation_candidates(rows)] == ["full", close["config"], near["config"],
                                                                     dominated["config"]]
    assert [r["config"] for r in confirmation_candidates(rows, margin=0.0)] == ["full", near["config"],
                                                                                 dominated["config"]]
    assert [r["config"] for r in confirmation_candidates(rows, most=1)] == ["full", close["config"]]
    assert confirmation_candidates([near, close]) == []  # nothing to compare with


def test_cost_is_macs_at_real_lengths():
    """On short windows a cap configuration stated for 384 saves little: only layers whose k is below the length."""
    import numpy as np

    config = LengthConfig.parse("315,251,242,159,142,33", 6)
    assert macs_ratio_at_lengths(config, np.array([384]), 384, 1536) == pytest.approx(0.54, abs=0.01)
    short = macs_ratio_at_lengths(config, np.array([150, 160]), 384, 1536)
    assert 0.6 < short < 0.95  # layers 0-2 keep every token of a 150-token window
    assert macs_ratio_at_lengths(LengthConfig.full(6), np.array([100, 384]), 384, 1536) == 1.0


def test_search_slice_is_held_out_train():
    """Spread over train's articles (a contiguous 50 would be one article), never dev, never calibration or tuning."""
    examples = search_examples(50)
    ids = {e.id for e in examples}
    assert len(examples) == 50 and not ids & {e.id for e in squad.load_squad("dev")}
    assert len({e.title for e in examples}) >= 40
    assert [e.id for e in search_examples(50, neighbours=2)] == [e.id for e in examples]  # the same questions, widened
    others = search_examples(60, exclude=frozenset(ids))
    assert len(others) == 60 and not ids & {e.id for e in others}
    assert [e.id for e in search_examples(50, offset=1)] != [e.id for e in examples]
    from toolchain.data.calibration_windows import calibration_examples
    from toolchain.core.settings import QuantizeSettings
    from toolchain.quantize.quantize import tuning_examples

    assert not ids & {e.id for e in calibration_examples("squad", 1000)}
    assert not ids & {e.id for e in tuning_examples(QuantizeSettings.tune_questions, "squad")}


def test_search_finds_a_front_anchored_at_the_full_model(trained_dir):
    result = search_configs(trained_dir, SearchSettings(trials=5, questions=12, min_ratio=0.4), log=lambda _: None)
    assert "train" in result["objective"]["maximize"] and "unpadded" in result["objective"]["maximize"]
    # the reference model's LengthDrop stage drew keep ratios down to 0.8 (its record); --min-ratio 0.4 searches below
    assert "below what LengthDrop trained ([0.80, 1], train-2-lengthdrop.json)" in result["space"]
    rows = result["evaluated"]
    assert rows[0]["config"] == "full" and rows[0]["macs_unpadded"] == 1.0
    # scored on the mix: the same questions as paragraphs and as documents; F1 is their mean
    assert [w.split(" ")[0] for w in result["workloads"]] == ["paragraphs", "documents"]
    for r in rows:
        by = r["f1_by_workload"]
        assert list(by) == result["workloads"] and r["f1"] == pytest.approx(sum(by.values()) / 2)
        assert set(r["cost_by_workload"]) == set(by)
    assert result["recommended"] in rows  # at worst the full model itself
    full = rows[0]["f1_by_workload"]
    assert full["paragraphs"] != full[result["workloads"][1]]  # two different workloads really ran
    assert 2 <= len(rows) <= 5
    front = result["pareto"]
    assert front == sorted(front, key=lambda r: r["macs_unpadded"])
    for r in front:  # nothing evaluated beats a front member on both objectives
        assert not any(o["macs_unpadded"] < r["macs_unpadded"] and o["f1"] > r["f1"] for o in rows)
    for r in rows:
        if r["config"] != "full":
            LengthConfig.parse(r["config"], 6).validate(6)
            assert r["macs_unpadded"] <= 1.0


@pytest.mark.slow
def test_two_workers_share_one_resumable_study(trained_dir, tmp_path):
    storage = str(tmp_path / "study.journal")
    with pytest.raises(ValueError, match="must share a study"):
        search_configs(trained_dir, SearchSettings(trials=4, workers=2), log=lambda _: None)
    first = search_configs(trained_dir, SearchSettings(trials=4, questions=6, min_ratio=0.5, storage=storage, workers=2,
                                                       sampler="evolution", population=2), log=lambda _: None)
    assert 4 <= first["trials"] <= 5  # two workers racing to the budget may each finish one last trial
    study = optuna.load_study(study_name="qtool-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == first["trials"] and len({t.number for t in complete}) == len(complete)
    resumed = search_configs(trained_dir, SearchSettings(trials=7, questions=6, min_ratio=0.5, storage=storage),
                             log=lambda _: None)
    assert resumed["trials"] == 7  # resumed: the study grows to the new budget on top of the workers' trials
    assert {r["config"] for r in first["evaluated"]} <= {r["config"] for r in resumed["evaluated"]}


def test_document_questions_are_the_search_questions_widened():
    paragraphs, documents = search_examples(20), search_examples(20, neighbours=2)
    assert sum(len(d.context) > len(p.context) for p, d in zip(paragraphs, documents)) >= 18
    assert [e.id for e in paragraphs] == [e.id for e in documents]
    for p, d in zip(paragraphs, documents):
        assert p.context in d.context
        assert all(d.context[s:s + len(t)] == t for t, s in zip(d.answers, d.answer_starts))


def test_a_study_resumed_with_other_settings_is_refused(trained_dir, tmp_path):
    storage = str(tmp_path / "study.journal")
    search_configs(trained_dir, SearchSettings(trials=1, questions=4, neighbours=0, min_ratio=0.5, storage=storage),
                   log=lambda _: None)
    with pytest.raises(InputError, match="other settings.*workloads"):
        search_configs(trained_dir, SearchSettings(trials=2, questions=4, neighbours=2, min_ratio=0.5, storage=storage),
                       log=lambda _: None)
    with pytest.raises(InputError, match=r"other settings \(variant\)"):
        search_configs(trained_dir, SearchSettings(trials=2, questions=4, neighbours=0, min_ratio=0.5, storage=storage,
                                                   variant="match"), log=lambda _: None)


def test_search_starts_from_given_configurations_and_confirms_on_another_slice(trained_dir):
    """--start-from evaluates a configuration right after the full model; --confirm-questions re-scores the full
    model and the front near the bar on the questions before the search's, and recommends from those scores."""
    start = "300,250,200,160,120,100"
    seen = []
    result = search_configs(trained_dir, SearchSettings(trials=3, questions=4, neighbours=0, min_ratio=0.5,
                                                        start_from=(start,), confirm_questions=5), log=seen.append)
    assert [r["config"] for r in result["evaluated"][:2]] == ["full", start]
    confirmed = result["confirmation"]
    assert confirmed["questions"] == 5
    rows = confirmed["rows"]
    assert rows[0]["config"] == "full" and len(rows) == len(confirmation_candidates(result["evaluated"]))
    for row in rows:  # scored again, on other questions: the search's F1 is kept beside
        searched = next(r for r in result["evaluated"] if r["config"] == row["config"])
        assert row["search_f1_by_workload"] == searched["f1_by_workload"] and row["cost"] == searched["cost"]
    assert rows[0]["f1_by_workload"] != rows[0]["search_f1_by_workload"]
    for row in rows[1:]:  # each against the full model on the same questions, with the noise of that slice
        for name, versus in row["f1_vs_full_by_workload"].items():
            assert versus["difference"] == pytest.approx(row["f1_by_workload"][name] - rows[0]["f1_by_workload"][name])
            assert versus["low"] <= versus["difference"] <= versus["high"]
    assert result["recommended"] == recommend(rows) and result["recommended_on_search_slice"] == recommend(result["evaluated"])
    assert sum("confirm" in line for line in seen) == len(rows)
    with pytest.raises(InputError, match="below the searched space") as info:
        search_configs(trained_dir, SearchSettings(trials=1, questions=4, neighbours=0, min_ratio=0.5,
                                                   start_from=("300,100,100,100,100,100",)), log=lambda _: None)
    assert "\n" not in str(info.value)


def test_paired_interval_resamples_questions_together():
    """The same questions, so a constant gap has no spread; a gap on a few questions has a wide interval that
    narrows as questions are added."""
    rng = np.random.default_rng(0)
    ours = rng.uniform(size=400)
    assert paired_interval(ours, ours) == (0.0, 0.0, 0.0)
    shifted = paired_interval(np.minimum(ours + 0.01, 1.0), ours)
    assert shifted[1] <= shifted[0] <= shifted[2] and 0.9 < shifted[0] < 1.0 and shifted[2] - shifted[1] < 0.2
    few = np.zeros(200)
    few[:6] = 1.0  # 6 of 200 questions answered better: +3 F1
    diff, low, high = paired_interval(few, np.zeros(200))
    assert diff == pytest.approx(3.0) and low < 1.5 and high > 4.5
    more = np.zeros(2000)
    more[:60] = 1.0
    assert paired_interval(more, np.zeros(2000))[2] - paired_interval(more, np.zeros(2000))[1] < (high - low) / 2


def test_search_runs_the_variant_asked_for(trained_dir):
    """The test model was trained with qtool's variant; --variant match searches the question-keeping one."""
    seen = []
    result = search_configs(trained_dir, SearchSettings(trials=2, questions=4, neighbours=0, min_ratio=0.5,
                                                        variant="match"), log=seen.append)
    assert result["variant"] == "match" and "variant match" in result["objective"]["maximize"]
    assert len(seen) == 2 and len(result["evaluated"]) >= 1


def test_the_recommendation_is_the_cheapest_that_holds_every_workload():
    def row(config, cost, paragraphs, documents):
        return {"config": config, "cost": cost, "f1": (paragraphs + documents) / 2,
                "f1_by_workload": {"paragraphs": paragraphs, "documents": documents}}

    full = row("full", 1.0, 71.1, 63.7)
    cheap_but_loses_documents = row("300,250,200,150,120,100", 0.6, 71.1, 50.0)
    holds = row("341,334,332,292,280,254", 0.86, 71.1, 64.5)
    holds_dearer = row("367,358,357,343,307,294", 0.92, 71.3, 63.6)
    loses_paragraphs = row("350,331,305,278,246,229", 0.83, 70.0, 64.0)
    rows = [full, cheap_but_loses_documents, holds, holds_dearer, loses_paragraphs]
    assert recommend(rows)["config"] == holds["config"]
    assert recommend(rows, tolerance=1.5)["config"] == loses_paragraphs["config"]
    assert recommend(rows, tolerance=20)["config"] == cheap_but_loses_documents["config"]
    assert recommend([holds]) is None  # no full model to compare with
    assert recommend([full, cheap_but_loses_documents])["config"] == "full"
    # against a reference graph (the standard recipe, 2 F1 below the full model on documents) the bar is its F1
    standard = row("std-int8-o2-dynamic", 1.1, 70.0, 61.7)
    assert recommend(rows, reference=standard)["config"] == loses_paragraphs["config"]
    assert recommend(rows, tolerance=12, reference=standard)["config"] == cheap_but_loses_documents["config"]
    assert recommend(rows, reference=row("better", 1.0, 80.0, 80.0)) is None  # nothing holds
    assert [r["config"] for r in confirmation_candidates(rows, margin=0.0, reference=standard)] == [
        "full", loses_paragraphs["config"], holds["config"], holds_dearer["config"]]


def test_a_reference_graph_is_scored_on_the_same_questions(trained_dir, exported_root):
    """--reference-graph: the graph runs the search's questions and the confirmation's; the FP32 full graph of the
    same model answers as the PyTorch full model does, so its bar is the full row's F1 and the paired gap is 0."""
    graph = exported_root / "fp32-full"
    result = search_configs(trained_dir, SearchSettings(trials=2, questions=4, neighbours=0, min_ratio=0.5,
                                                        confirm_questions=5, reference_graph=str(graph)),
                            log=lambda _: None)
    full = next(r for r in result["evaluated"] if r["config"] == "full")
    assert result["reference"]["config"] == "fp32-full"
    assert result["reference"]["f1_by_workload"] == pytest.approx(full["f1_by_workload"], abs=1e-6)
    confirmed = result["confirmation"]
    assert confirmed["reference"]["f1_by_workload"] == pytest.approx(confirmed["rows"][0]["f1_by_workload"], abs=1e-6)
    for versus in confirmed["rows"][0]["f1_vs_reference_by_workload"].values():
        assert versus["difference"] == pytest.approx(0.0, abs=1e-6)
    assert result["recommended"] == recommend(confirmed["rows"], reference=confirmed["reference"])


def test_evolution_breeds_from_the_pareto_front():
    """After the random population, a pure-mutation child with no gene mutated is a copy of a front member."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = EvolutionSampler(population=6, mutation_prob=1.0, gene_prob=0.0, seed=1)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("a", 0, 1) + t.suggest_float("b", 0, 1), t.suggest_float("c", 0, 1)),
                   n_trials=12)
    trials = study.trials
    for child in trials[6:]:
        earlier = [t.params for t in trials[: child.number]]
        assert child.params in earlier


def test_the_trained_space_is_read_from_the_training_record(tmp_path):
    import json

    assert trained_space(tmp_path) == (None, "no LengthDrop training record", None)
    (tmp_path / "train-1-plain.json").write_text(json.dumps({"args": {"length_drop": False}}))
    (tmp_path / "train-2-lengthdrop.json").write_text(json.dumps({"args": {"length_drop": True, "length_drop_ratio": 0.2}}))
    ratio, record, rule = trained_space(tmp_path)
    assert ratio == pytest.approx(0.8) and record == "train-2-lengthdrop.json" and rule == "ratio"  # before --length-rule
    (tmp_path / "qtool_train.json").write_text(
        json.dumps({"args": {"length_drop": True, "length_drop_ratio": 0.4, "length_rule": "cap"}}))
    assert trained_space(tmp_path) == (pytest.approx(0.6), "qtool_train.json", "cap")


def test_the_search_leaves_out_what_the_last_training_stage_saw(tmp_path):
    """A stage trained on the first N train questions is not searched (nor confirmed) on them."""
    import json

    from toolchain.data.splits import spread_ids, trained_questions

    assert trained_questions(tmp_path) == frozenset()  # no record
    (tmp_path / "train-3-doc.json").write_text(json.dumps({"args": {"train_file": "train-wide1.json", "limit": 8000}}))
    assert trained_questions(tmp_path) == frozenset()  # another file: nothing of train's to leave out
    (tmp_path / "qtool_train.json").write_text(json.dumps({"args": {"train_file": "train", "limit": 3000}}))
    seen = trained_questions(tmp_path)
    assert seen == {e.id for e in squad.load_squad("train", limit=3000)}
    assert seen & set(spread_ids(400)) and not seen & set(spread_ids(400, exclude=seen))
    by_path = str(squad.resolve_squad_file("train").resolve())  # `--train-file` given as a path to the same file
    (tmp_path / "qtool_train.json").write_text(json.dumps({"args": {"train_file": by_path, "limit": 3000}}))
    assert trained_questions(tmp_path) == seen
    (tmp_path / "qtool_train.json").write_text(json.dumps({"args": {"train_file": "train", "limit": None}}))
    assert trained_questions(tmp_path) == frozenset()  # all of train: nothing could be held out
