import json

import numpy as np
import pytest

from toolchain.data import squad


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
    em, f1 = squad.question_scores({"a": "city of Paris"}, ex)  # per question, in the examples' order
    assert em.tolist() == [1.0, 0.0] and f1.tolist() == [1.0, 0.0]  # articles do not count; "b" has no prediction


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
    with pytest.raises(squad.SquadFormatError, match='has no "data" list'):
        squad.load_squad(bad)


@pytest.fixture(scope="module")
def dev_head(squad_dir):
    """The first two paragraphs of the real dev file, as raw SQuAD JSON to break in different ways."""
    raw = json.loads((squad_dir / "dev-v1.1.json").read_text())
    article = dict(raw["data"][0], paragraphs=raw["data"][0]["paragraphs"][:2])
    return {"version": raw["version"], "data": [article]}


def _write(tmp_path, data) -> str:
    path = tmp_path / "squad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _pop(obj: dict, key: str) -> None:
    del obj[key]


def _qa(data):
    return data["data"][0]["paragraphs"][1]["qas"][2]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: "{\"data\": [", r"is not JSON \(.*line 1"),
        (lambda d: [d], 'the top level has no "data" list'),
        (lambda d: _pop(d["data"][0], "paragraphs"), r'data\[0\] has no "paragraphs" list'),
        (lambda d: _pop(d["data"][0]["paragraphs"][1], "context"), r'data\[0\].paragraphs\[1\] has no "context" string'),
        (lambda d: _pop(d["data"][0]["paragraphs"][0], "qas"), r'paragraphs\[0\] has no "qas" list'),
        (lambda d: _pop(_qa(d), "id"), r'paragraphs\[1\].qas\[2\] has no "id" string'),
        (lambda d: _pop(_qa(d), "question"), r'qas\[2\] has no "question" string'),
        (lambda d: _qa(d).update(answers={"text": "x"}), '"answers" is not a list'),
        (lambda d: _pop(_qa(d)["answers"][0], "answer_start"), r"qas\[2\].answers\[0\] is not"),
        (lambda d: _qa(d)["answers"][0].update(answer_start="12"), r"answers\[0\] is not"),
        (lambda d: _qa(d)["answers"][0].update(answer_start=10**6), "integer within the context"),
        (lambda d: _qa(d).update(id=d["data"][0]["paragraphs"][0]["qas"][0]["id"]), "repeats the question id"),
        (lambda d: d.update(version="v2.0"), "SQuAD version v2.0: qtool scores SQuAD v1.1 only"),
        (lambda d: _qa(d).update(is_impossible=True, answers=[]), r"qas\[2\] is a SQuAD v2.0 question: qtool scores SQuAD v1.1 only"),
        (lambda d: _qa(d).update(plausible_answers=[]), "qtool scores SQuAD v1.1 only"),
        (lambda d: d.update(data=[]), "holds no questions"),
    ],
)
def test_malformed_squad_is_one_clear_line(tmp_path, dev_head, breakage, message):
    data = json.loads(json.dumps(dev_head))
    assert len(squad.load_squad(_write(tmp_path, data))) > 3  # the unbroken slice loads
    replaced = breakage(data)
    path = _write(tmp_path, replaced if isinstance(replaced, (str, list)) else data)
    with pytest.raises(squad.SquadFormatError, match=message) as info:
        squad.load_squad(path)
    assert "\n" not in str(info.value) and path in str(info.value)


def test_v2_marker_past_the_slice_is_still_refused(tmp_path, dev_head):
    """A slice of a v2.0 file must not pass just because its first questions look like v1.1."""
    data = json.loads(json.dumps(dev_head))
    data["version"] = "1.1"
    data["data"][0]["paragraphs"][-1]["qas"][-1]["is_impossible"] = True
    with pytest.raises(squad.SquadFormatError, match="v1.1 only"):
        squad.load_squad(_write(tmp_path, data), limit=2)


@pytest.mark.parametrize(
    "limit, offset, message",
    [(0, 0, "limit must be a positive"), (-3, 0, "limit must be a positive"), (5, -1, "offset must be 0 or more"),
     (5, 10570, r"offset 10570 is past the end of .*dev-v1.1.json \(10570 questions\)")],
)
def test_bad_slices_are_value_errors(squad_dir, limit, offset, message):
    with pytest.raises(ValueError, match=message):
        squad.load_squad("dev", limit=limit, offset=offset)
    assert [e.id for e in squad.load_squad("dev", limit=2, offset=10568)] == [
        e.id for e in squad.load_squad("dev")[-2:]
    ]


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


def test_document_workload_widens_contexts_with_neighbouring_paragraphs():
    """Each question keeps its own id and question; its context gains up to N paragraphs of the same article on
    each side, and every gold answer still points at its own text."""
    from toolchain.data import squad

    plain = squad.load_squad("dev", limit=60)
    wide = squad.load_squad("dev", limit=60, neighbours=2)
    assert [e.id for e in wide] == [e.id for e in plain] and [e.question for e in wide] == [e.question for e in plain]
    paragraphs = list(dict.fromkeys(e.context for e in squad.load_squad("dev", limit=200)))
    for p, w in zip(plain, wide):
        assert p.context in w.context and len(w.context) > len(p.context)
        for text, start in zip(w.answers, w.answer_starts):
            assert w.context[start: start + len(text)] == text
    first = paragraphs.index(plain[0].context)
    assert wide[0].context == "\n".join(paragraphs[first: first + 3])  # the article's first paragraph: 2 after it
    with pytest.raises(squad.InputError, match="neighbours must be 0 or more"):
        squad.load_squad("dev", limit=1, neighbours=-1)


def test_spread_dev_draws_from_every_part_of_dev_as_documents():
    """Reports on dev take questions spread over all of it: the first thousand come from two articles."""
    from toolchain.core.errors import InputError
    from toolchain.data.splits import spread_dev

    every = squad.load_squad("dev")
    spread = spread_dev(48)
    assert [e.id for e in spread] == [every[i * len(every) // 48].id for i in range(48)]
    assert len({e.title for e in spread}) > 30 and len({e.title for e in every[:1000]}) == 2
    plain = {e.id: e.context for e in every}
    assert all(len(e.context) > len(plain[e.id]) and plain[e.id] in e.context for e in spread)  # widened contexts
    with pytest.raises(InputError, match="^20000 questions asked for; SQuAD dev holds 10570$"):
        spread_dev(20_000)
