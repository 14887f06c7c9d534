import numpy as np

from toolchain import squad
from toolchain import verify
from toolchain.model import LengthConfig


def test_trimmed_padding_is_exact_for_the_full_configuration(minilm_qa, minilm_tokenizer, monkeypatch):
    examples = squad.load_squad("dev", limit=20, offset=300)
    feats = squad.featurize(examples, minilm_tokenizer)
    trimmed = verify.predict_torch(minilm_qa, feats, LengthConfig.full(6), batch_size=8)
    untrimmed_batches = verify._batches
    monkeypatch.setattr(verify, "_batches", lambda f, b, trim: untrimmed_batches(f, b, False))
    padded = verify.predict_torch(minilm_qa, feats, LengthConfig.full(6), batch_size=8)
    real = feats.attention_mask.astype(bool)
    assert np.abs(trimmed.start_logits - padded.start_logits)[real].max() < 1e-4
    assert np.abs(trimmed.end_logits - padded.end_logits)[real].max() < 1e-4
    assert verify.score(examples, feats, trimmed) == verify.score(examples, feats, padded)


def test_pareto_front():
    points = [(1.0, 80.0), (0.5, 79.0), (0.6, 78.0), (0.4, 70.0), (1.2, 80.0)]
    assert verify.pareto_front(points) == [3, 1, 0]


def test_kept_agreement_counts_real_tokens_only():
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    a = verify.Predictions(None, None, [np.array([[0, 1, 2, 4]])])
    b = verify.Predictions(None, None, [np.array([[0, 1, 3, 5]])])
    assert verify.kept_agreement(a, b, mask) == [2 / 3]
