import json

import numpy as np
import pytest

from toolchain import squad


@pytest.mark.parametrize(
    "pred, gold, em, f1",
    [
        ("The Cat!", "cat", 1.0, 1.0),  # case, article and punctuation are normalised away
        ("Denver  Broncos", "denver broncos", 1.0, 1.0),
        ("the big cat", "a cat sat", 0.0, 0.5),  # {big, cat} vs {cat, sat}: P = R = 1/2
        ("cat cat", "cat", 0.0, 2 / 3),  # P = 1/2, R = 1
        ("dog", "cat", 0.0, 0.0),
        ("", "cat", 0.0, 0.0),
    ],
)
def test_metric_hand_worked(pred, gold, em, f1):
    assert squad.exact_match(pred, gold) == em
    assert squad.f1(pred, gold) == pytest.approx(f1)


def test_score_takes_best_gold_and_counts_missing_as_zero():
    ex = [
        squad.SquadExample("a", "", "q", "c", ("Paris", "the city of Paris"), (0, 0)),
        squad.SquadExample("b", "", "q", "c", ("1990",), (0,)),
    ]
    scores = squad.squad_scores({"a": "city of Paris"}, ex)
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(50.0)


def test_gold_answers_score_100_on_dev(squad_dir):
    examples = squad.load_squad("dev", limit=500)
    assert len(examples) == 500 and all(len(e.answers) >= 1 for e in examples)
    preds = {e.id: e.answers[-1] for e in examples}
    scores = squad.squad_scores(preds, examples)
    assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0


def test_load_slices_and_counts(squad_dir):
    first = squad.load_squad("dev", limit=10)
    shifted = squad.load_squad("dev", limit=5, offset=5)
    assert [e.id for e in first[5:]] == [e.id for e in shifted]
    assert len(squad.load_squad("train", limit=3)) == 3


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        squad.load_squad(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no": "data"}))
    with pytest.raises(squad.SquadFormatError):
        squad.load_squad(bad)


def test_featurize_targets_recover_gold_answers(minilm_tokenizer, squad_dir):
    """Training targets point at the gold span: one-hot logits on them post-process back to the answer."""
    examples = squad.load_squad("train", limit=200)
    feats = squad.featurize(examples, minilm_tokenizer, max_length=192, doc_stride=64, with_targets=True)
    assert len(feats) > len(examples)  # long contexts are split into several windows
    assert feats.input_ids.shape == (len(feats), 192)
    start = np.full(feats.input_ids.shape, -10.0, dtype=np.float32)
    end = start.copy()
    rows = np.arange(len(feats))
    start[rows, feats.start_positions] = 10.0
    end[rows, feats.end_positions] = 10.0
    has_answer = feats.start_positions > 0
    assert has_answer.mean() > 0.6
    # windows without the answer point at [CLS], which post-processing never picks
    preds = squad.postprocess(examples, feats, start, end)
    assert squad.squad_scores(preds, examples)["f1"] > 99.0


def test_postprocess_respects_max_answer_length(minilm_tokenizer, squad_dir):
    examples = squad.load_squad("dev", limit=3)
    feats = squad.featurize(examples, minilm_tokenizer)
    start = np.zeros(feats.input_ids.shape, dtype=np.float32)
    end = np.zeros_like(start)
    ctx = np.nonzero(feats.offsets[0, :, 0] >= 0)[0]
    start[0, ctx[0]] = 5.0
    end[0, ctx[0] + 40] = 5.0  # too long a span: must not be chosen
    preds = squad.postprocess(examples, feats, start, end)
    text = preds[examples[0].id]
    assert len(minilm_tokenizer.tokenize(text)) <= squad.MAX_ANSWER_LENGTH
    with pytest.raises(ValueError):
        squad.postprocess(examples, feats, start[:1], end[:1])
