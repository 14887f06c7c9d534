import pytest
import torch

from toolchain.data import squad
from toolchain.core.length import LengthConfig, LengthConfigError
from toolchain.model.drop_and_restore import (
    UnsupportedModelError,
    check_supported,
    drop_and_restore,
    flops,
    flops_ratio,
    load_qa_model,
)


@pytest.fixture(scope="module")
def batch(minilm_tokenizer, dev_examples):
    feats = squad.featurize(dev_examples[:6], minilm_tokenizer, max_length=384)
    return feats, {k: torch.from_numpy(v) for k, v in feats.model_inputs().items()}


@pytest.mark.parametrize(
    "text, message",
    [
        ("315,251,242,159,142", "has 5 values"),
        ("315,251,242,159,142,33,20", "has 7 values"),
        ("315,251,260,159,142,33", "increases at layer 2"),
        ("315,251,242,159,0,0", "at least 1"),
        ("400,251,242,159,142,33", "more than the sequence length 384"),
        ("315,abc,242,159,142,33", "comma-separated integers"),
    ],
)
def test_bad_configs_are_refused(text, message):
    with pytest.raises(LengthConfigError, match=message):
        LengthConfig.parse(text, num_layers=6, seq_len=384)


def test_config_parse_and_scaling():
    config = LengthConfig.parse("315, 251,242,159,142,33", 6)
    assert config.keep == (315, 251, 242, 159, 142, 33) and str(config) == "315,251,242,159,142,33"
    assert [config.keep_count(i, 384, 384) for i in range(6)] == list(config.keep)
    # cap (default): never more than the configuration says, never more than arrives
    assert config.rule == "cap"
    assert config.keep_count(0, 192, 192) == 192 and config.keep_count(1, 192, 192) == 192
    assert config.keep_count(5, 192, 50) == 33 and config.keep_count(5, 20, 20) == 20
    # ratio is retired for graphs: refused for a reduced configuration, read (as the plain model) for a full one
    with pytest.raises(LengthConfigError, match="length rule 'ratio' is retired"):
        LengthConfig.parse("315,251,242,159,142,33", 6, rule="ratio")
    old_full = LengthConfig.from_dict({"keep": [384] * 6, "seq_len": 384, "rule": "ratio"})
    assert old_full.is_full and old_full.rule == "cap" and old_full == LengthConfig.full(6)
    with pytest.raises(LengthConfigError, match="length rule 'half'"):
        LengthConfig.parse("full", 6, rule="half")
    assert LengthConfig.from_dict(config.to_dict()) == config
    assert LengthConfig.full(6).is_full and not config.is_full
    assert LengthConfig.parse("full", 6) == LengthConfig.full(6) and LengthConfig.full(6).label == "full"


def test_flops_formula():
    d, ff = 4, 8
    config = LengthConfig((3, 2), seq_len=4)
    layer1 = 4 * 4 * d * d + 2 * 4 * 4 * d + 2 * 3 * d * ff
    layer2 = 4 * 3 * d * d + 2 * 3 * 3 * d + 2 * 2 * d * ff
    assert flops(config, d, ff) == layer1 + layer2
    assert flops_ratio(LengthConfig.full(6), 384, 1536) == 1.0
    ratio = flops_ratio(LengthConfig.parse("315,251,242,159,142,33", 6), 384, 1536)
    assert 0.5 < ratio < 0.6


def test_full_config_equals_plain_model(minilm_qa, batch):
    _, inputs = batch
    with torch.no_grad():
        plain = minilm_qa(**inputs)
        start, end = drop_and_restore(minilm_qa, **inputs, config=LengthConfig.full(6))
    assert torch.allclose(start, plain.start_logits, atol=1e-5)
    assert torch.allclose(end, plain.end_logits, atol=1e-5)


def test_reduced_config_keeps_the_most_attended_real_tokens(minilm_qa, batch):
    feats, inputs = batch
    config = LengthConfig.parse("200,150,120,90,60,30", 6)
    with torch.no_grad():
        start, end, kept = drop_and_restore(minilm_qa, **inputs, config=config, return_kept=True)
        plain = minilm_qa(**inputs).start_logits
    assert start.shape == end.shape == (len(feats), 384)  # restored: a logit for every position
    assert [k.shape[1] for k in kept] == list(config.keep)
    real = feats.attention_mask.sum(1)
    for layer in range(6):
        for row in range(len(feats)):
            positions = kept[layer][row].numpy()
            assert len(set(positions)) == len(positions)
            if layer:
                assert set(positions) <= set(kept[layer - 1][row].numpy())  # dropped tokens never come back
            n_real = (feats.attention_mask[row][positions] == 1).sum()
            assert n_real == min(len(positions), real[row])  # padding ranks last
    assert not torch.allclose(start, plain, atol=1e-3)  # dropping changes the answer logits


def test_first_layer_ranking_is_attention_received(minilm_qa, batch):
    """Layer 0 keeps exactly the tokens with the most attention received (HF's own attention probs)."""
    feats, inputs = batch
    config = LengthConfig.parse("64,64,64,64,64,64", 6)
    with torch.no_grad():
        _, _, kept = drop_and_restore(minilm_qa, **inputs, config=config, return_kept=True)
        probs = minilm_qa(**inputs, output_attentions=True).attentions[0]  # [B, H, q, k]
    mask = inputs["attention_mask"].float()
    received = (probs * mask[:, None, :, None]).sum((1, 2))
    received[mask == 0] = -1
    want = torch.topk(received, 64, dim=1).indices
    for row in range(len(feats)):
        assert set(kept[0][row].tolist()) == set(want[row].tolist())


def test_unsupported_models_are_refused(tmp_path):
    from transformers import AlbertConfig, AlbertForQuestionAnswering

    model = AlbertForQuestionAnswering(AlbertConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                                    num_attention_heads=2, vocab_size=100))
    with pytest.raises(UnsupportedModelError, match="'albert' is not supported"):
        check_supported(model)
    model.save_pretrained(tmp_path / "albert")
    with pytest.raises(UnsupportedModelError):
        load_qa_model(tmp_path / "albert")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_qa_model(tmp_path)
