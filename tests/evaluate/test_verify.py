import numpy as np
import pytest

from toolchain.core.pareto import pareto_front
from toolchain.graph import runtime
from toolchain.data import squad
from toolchain.model.drop_and_restore import LengthConfig


def test_trimmed_padding_is_exact_for_the_full_configuration(minilm_qa, minilm_tokenizer, monkeypatch):
    examples = squad.load_squad("dev", limit=20, offset=300)
    feats = squad.featurize(examples, minilm_tokenizer)
    trimmed = runtime.predict_torch(minilm_qa, feats, LengthConfig.full(6), batch_size=8)
    batches = runtime.batches
    monkeypatch.setattr(runtime, "batches", lambda f, b, protocol, invariant, full_up_to=0: batches(f, b, protocol=protocol, invariant=False))
    padded = runtime.predict_torch(minilm_qa, feats, LengthConfig.full(6), batch_size=8)
    real = feats.attention_mask.astype(bool)
    assert np.abs(trimmed.start_logits - padded.start_logits)[real].max() < 1e-4
    assert np.abs(trimmed.end_logits - padded.end_logits)[real].max() < 1e-4
    assert runtime.score(examples, feats, trimmed) == runtime.score(examples, feats, padded)


def test_protocols_feed_windows_as_documented(minilm_tokenizer):
    feats = squad.featurize(squad.load_squad("dev", limit=30), minilm_tokenizer)
    lengths = feats.attention_mask.sum(1)
    seen = []
    for rows, inputs in runtime.batches(feats, 4, protocol="unpadded", invariant=False):
        assert inputs["input_ids"].shape == (1, lengths[rows[0]]) and inputs["attention_mask"].all()  # alone, unpadded
        seen.extend(rows.tolist())
    assert seen == list(range(len(feats)))
    padded = list(runtime.batches(feats, 4, protocol="padded", invariant=False))
    assert {inputs["input_ids"].shape for _, inputs in padded[:-1]} == {(4, 384)}
    bucketed = list(runtime.batches(feats, 4, protocol="bucketed", invariant=False))
    for rows, inputs in bucketed:
        assert inputs["input_ids"].shape[1] == lengths[rows].max()  # padded to the batch's longest
    assert [r for rows, _ in bucketed for r in rows] == list(np.argsort(lengths, kind="stable"))
    for protocol in runtime.PROTOCOLS:  # invariant graphs may run every protocol as sorted, trimmed batches
        fast = list(runtime.batches(feats, 4, protocol=protocol, invariant=True))
        assert all(inputs["input_ids"].shape[1] == lengths[rows].max() for rows, inputs in fast)
    with pytest.raises(ValueError, match="protocol 'bogus'"):
        next(runtime.batches(feats, 4, protocol="bogus", invariant=False))


def test_cap_rule_answers_the_same_padded_or_not(minilm_qa, minilm_tokenizer):
    """Under `cap`, an unpadded window keeps the real tokens it keeps padded: same logits, same kept sets.
    (The retired `ratio` rule kept fewer tokens on short unpadded windows, so answers moved.)"""
    examples = squad.load_squad("dev", limit=12, offset=40)
    feats = squad.featurize(examples, minilm_tokenizer)
    assert feats.attention_mask.sum(1).min() < 300  # some windows are much shorter than 384
    cap = LengthConfig.parse("315,251,242,159,142,33", 6, rule="cap")
    padded = runtime.predict_torch(minilm_qa, feats, cap, protocol="padded")
    unpadded = runtime.predict_torch(minilm_qa, feats, cap, protocol="unpadded")
    real = feats.attention_mask.astype(bool)
    assert np.abs(padded.start_logits - unpadded.start_logits)[real].max() < 1e-3
    assert runtime.kept_agreement(padded, unpadded, feats.attention_mask) == [1.0] * 6


def test_pareto_front():
    points = [(1.0, 80.0), (0.5, 79.0), (0.6, 78.0), (0.4, 70.0), (1.2, 80.0)]
    assert pareto_front(points) == [3, 1, 0]


def test_kept_agreement_counts_real_tokens_only():
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    a = runtime.Predictions(None, None, [np.array([[0, 1, 2, 4]])])
    b = runtime.Predictions(None, None, [np.array([[0, 1, 3, 5]])])
    assert runtime.kept_agreement(a, b, mask) == [2 / 3]
