"""Model families: small random BERT, RoBERTa, DistilBERT and ELECTRA models built here, with the shipped
MiniLM tokenizer, run Drop-and-Restore through their adapters, export and quantize by role."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import export_recording_variant
from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.graph.export import export_configs
from toolchain.model.families import ROLES, UnsupportedModelError, dims_of, family_of
from toolchain.core.length import LengthConfig, LengthConfigError
from toolchain.model.drop_and_restore import (MATCH_MAX_REPEATS, MATCH_WIDTH, drop_and_restore, flops,
                                              load_qa_model, near_question_words, significance)
from toolchain.quantize.recipes import Recipe, quantize_graph, select_nodes
from toolchain.core.settings import ExportSettings

FAMILIES = ("bert", "roberta", "distilbert", "electra")


def tiny_model(family: str, layers: int, *, hidden: int = 64, heads: int = 4, seed: int = 0):
    """A randomly initialised QA model of `family` over the 30,522-token uncased vocabulary."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=30522, max_position_embeddings=512)
    if family == "distilbert":
        config = tf.DistilBertConfig(n_layers=layers, dim=hidden, hidden_dim=2 * hidden, n_heads=heads, **common)
        model_cls = tf.DistilBertForQuestionAnswering
    else:
        config_cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "electra": tf.ElectraConfig}[family]
        extra = {}
        if family == "roberta":  # the MiniLM tokenizer pads with id 0; positions start after it
            extra = dict(pad_token_id=0, type_vocab_size=1, max_position_embeddings=514)
        if family == "electra":
            extra = dict(embedding_size=hidden // 2)  # exercises ELECTRA's embedding projection
        config = config_cls(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                            intermediate_size=2 * hidden, **{**common, **extra})
        model_cls = {"bert": tf.BertForQuestionAnswering, "roberta": tf.RobertaForQuestionAnswering,
                     "electra": tf.ElectraForQuestionAnswering}[family]
    config._attn_implementation = "eager"
    return model_cls(config).eval()


@pytest.fixture(scope="module")
def windows(minilm_tokenizer, dev_examples):
    """Six real dev windows, padded to 384 (different real lengths)."""
    feats = squad.featurize(dev_examples[:6], minilm_tokenizer, max_length=384)
    return feats


def _hf_logits(model, inputs: dict[str, torch.Tensor]):
    wanted = set(family_of(model).inputs)
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k in wanted})
    return out.start_logits, out.end_logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layers", [2, 4, 12])
def test_full_configuration_is_the_plain_model(family, layers, windows):
    """Through the adapter, the full configuration reproduces the transformers model on real tokens."""
    model = tiny_model(family, layers)
    inputs = {k: torch.from_numpy(v) for k, v in windows.model_inputs().items()}
    want_s, want_e = _hf_logits(model, inputs)
    with torch.no_grad():
        got_s, got_e = drop_and_restore(model, **inputs, config=LengthConfig.full(layers))
    real = inputs["attention_mask"].bool()
    assert torch.allclose(got_s[real], want_s[real], atol=1e-4)
    assert torch.allclose(got_e[real], want_e[real], atol=1e-4)
    assert dims_of(model).layers == layers


@pytest.mark.parametrize("family", FAMILIES)
def test_reduced_configuration_keeps_the_same_tokens_padded_or_not(family, windows):
    """Under the cap rule a window keeps the same real tokens and answers the same, padded or unpadded."""
    model = tiny_model(family, 4)
    config = LengthConfig.parse("300,200,120,60", 4)
    inputs = {k: torch.from_numpy(v) for k, v in windows.model_inputs().items()}
    with torch.no_grad():
        padded_s, _, padded_kept = drop_and_restore(model, **inputs, config=config, return_kept=True)
        for row in range(2):
            n = int(inputs["attention_mask"][row].sum())
            alone = {k: v[row : row + 1, :n] for k, v in inputs.items()}
            s, _, kept = drop_and_restore(model, **alone, config=config, return_kept=True)
            assert torch.allclose(s[0], padded_s[row, :n], atol=1e-4)
            for layer, (a, b) in enumerate(zip(padded_kept, kept)):
                want = {int(p) for p in a[row] if p < n}
                assert want == {int(p) for p in b[0]}, f"layer {layer}"


@pytest.mark.parametrize("family, layers", [("bert", 2), ("roberta", 4), ("distilbert", 6), ("electra", 2)])  # distilbert: its real depth
def test_export_validates_and_quantizes_by_role(family, layers, tmp_path, minilm_dir, minilm_tokenizer):
    """Export (validated against PyTorch: logits and exact kept tokens), inputs that follow the family, every
    role found for every layer, and an INT8 graph that quantizes exactly the nodes of the roles asked for."""
    folder = tmp_path / family
    model = tiny_model(family, layers)
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    keep = ",".join(str(k) for k in np.linspace(300, 40, layers).astype(int))
    (artifact,) = export_configs(folder, [keep], tmp_path / "graphs", settings=ExportSettings(samples=4))
    m = manifests.load(artifact)
    assert m.model_type == family
    assert m.interface.inputs == family_of(model).inputs
    assert ("token_type_ids" in m.interface.inputs) == (family in ("bert", "electra"))
    assert m.validation["kept_agreement"] == [1.0] * layers
    assert set(m.roles) == set(ROLES) | ({"embed_proj"} if family == "electra" else set())
    assert all(len(m.roles[r]) == layers for r in ROLES if r != "head") and len(m.roles["head"]) == 1

    recipe = Recipe("test-dynamic-no-ffn-out", mode="dynamic", keep_fp32=("ffn_out",), embeddings=False)
    int8 = tmp_path / "int8.onnx"
    quantize_graph(artifact / m.graph, int8, recipe, select_nodes(m, recipe), reader=None)
    graph = onnx.load(str(int8)).graph
    float_matmuls = {n.name for n in graph.node if n.op_type == "MatMul"}
    assert set(m.roles["ffn_out"]) <= float_matmuls  # kept FP32 by role
    quantized = [n.name for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantized) == sum(len(nodes) for r, nodes in m.roles.items() if r != "ffn_out")


def test_skipped_layer_has_no_nodes_and_costs_nothing(tmp_path, minilm_tokenizer, windows):
    model = tiny_model("bert", 4)
    config = LengthConfig.parse("300,skip,200,100", 4)
    assert config.skipped == (1,) and str(config) == "300,skip,200,100" and config.name() == "300-skip-200-100"
    assert LengthConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(LengthConfigError, match="increases"):
        LengthConfig.parse("300,skip,310,100", 4)
    with pytest.raises(LengthConfigError, match="skips every layer"):
        LengthConfig.parse("skip,skip,skip,skip", 4)
    # the skipped layer contributes nothing: same as the three-layer cost of the others
    hidden, ffn = 64, 128
    assert flops(config, hidden, ffn) < flops(LengthConfig.parse("300,300,200,100", 4), hidden, ffn)
    # PyTorch: skipping through the configuration is LayerDrop of that layer
    inputs = {k: torch.from_numpy(v) for k, v in windows.model_inputs().items()}
    with torch.no_grad():
        a = drop_and_restore(model, **inputs, config=config)[0]
        b = drop_and_restore(model, **inputs, config=LengthConfig.parse("300,300,200,100", 4), skip_layers=(1,))[0]
    assert torch.equal(a, b)

    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    (artifact,) = export_configs(folder, ["300,skip,200,100"], tmp_path / "graphs", settings=ExportSettings(samples=4))
    graph = onnx.load(str(artifact / "model.onnx")).graph
    assert not [n.name for n in graph.node if "layer.1." in n.name]
    assert [n.name for n in graph.node if "layer.2." in n.name]
    m = manifests.load(artifact)
    assert m.length_config.keep == (300, None, 200, 100)
    assert all(len(m.roles[r]) == 3 for r in ("q", "ffn_out"))


def lat_reference(model, input_ids, attention_mask, token_type_ids, keep):
    """LAT's Drop-and-Restore as its own code does it (Kim & Cho), written directly against BERT's modules:
    each layer keeps [CLS] plus the top k-1 tokens by attention summed over heads and all queries; the
    restored sequence starts as the embeddings and every layer scatters its kept outputs into it."""
    bert = model.bert
    h = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    ext = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
    b, n, d = h.shape
    restored = h
    remain = torch.arange(n).unsqueeze(0).repeat(b, 1)
    for layer, k in zip(bert.encoder.layer, keep):
        attn_out, probs = layer.attention(h, ext, output_attentions=True)[:2]
        score = probs.sum(2).sum(1)
        idx = score[:, 1:].topk(k - 1, 1)[1] + 1
        idx = torch.cat((idx.new_zeros((b, 1)), idx), 1)
        attn_out = attn_out.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))
        h = layer.output(layer.intermediate(attn_out), attn_out)
        remain = remain.gather(1, idx)
        restored = restored.scatter(1, remain.unsqueeze(-1).expand(-1, -1, d), h)
        ext = ext.gather(3, idx[:, None, None, :])
    logits = model.qa_outputs(restored)
    return logits[..., 0], logits[..., 1]


def test_lat_variant_matches_lats_own_restore(windows):
    model = tiny_model("bert", 4, seed=1)
    keep = (300, 200, 90, 40)
    config = LengthConfig(keep, 384, variant="lat")
    # unpadded windows, as LAT's reference sums over all queries (padding ones included)
    for row in range(3):
        n = int(windows.attention_mask[row].sum())
        inputs = {k: torch.from_numpy(v[row : row + 1, :n]) for k, v in windows.model_inputs().items()}
        k_here = tuple(min(k, n) for k in keep)
        with torch.no_grad():
            want_s, want_e = lat_reference(model, **inputs, keep=k_here)
            got_s, got_e = drop_and_restore(model, **inputs, config=config)
        assert torch.allclose(got_s, want_s, atol=1e-5) and torch.allclose(got_e, want_e, atol=1e-5)
    # and the two variants really differ
    inputs = {k: torch.from_numpy(v[:1]) for k, v in windows.model_inputs().items()}
    with torch.no_grad():
        qtool = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384))[0]
        lat = drop_and_restore(model, **inputs, config=config)[0]
    assert not torch.allclose(qtool, lat, atol=1e-3)


def test_lat_significance_counts_padding_queries():
    probs = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    qtool, lat = significance(probs, mask), significance(probs, mask, "lat")
    assert torch.allclose(lat[0, :3], probs.sum((1, 2))[0, :3])
    assert torch.allclose(qtool[0, :3], probs[:, :, :3].sum((1, 2))[0, :3])
    assert qtool[0, 3] == lat[0, 3] == -1.0


def test_match_variant_keeps_the_question_segment(windows):
    """`match` keeps [CLS] question [SEP] at every layer (the first k of it, in order, when k is smaller), where qtool's
    ranking may drop it; a family without token_type_ids refuses it in one line."""
    model = tiny_model("bert", 4, seed=1)
    inputs = {k: torch.from_numpy(v[:4]) for k, v in windows.model_inputs().items()}
    question_len = ((inputs["token_type_ids"] == 0) & (inputs["attention_mask"] > 0)).sum(1)
    assert question_len.min() > 8
    keep = (300, 120, 40, 8)
    with torch.no_grad():
        *_, kept = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384, variant="match"),
                                    return_kept=True)
        *_, kept_qtool = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384), return_kept=True)
    for row, n_q in enumerate(question_len.tolist()):
        for k, layer in zip(keep, kept):
            assert set(layer[row].tolist()) >= set(range(min(k, n_q)))
        assert sorted(kept[-1][row].tolist()) == list(range(8))
    assert any(not set(range(n_q)) <= set(k[row].tolist())
               for row, n_q in enumerate(question_len.tolist()) for k in kept_qtool[:3])  # qtool may drop them
    for family in ("distilbert", "roberta"):  # `match` ranks by segment, which these inputs do not carry
        other = tiny_model(family, 2)
        with pytest.raises(UnsupportedModelError, match="no token_type_ids") as info:
            drop_and_restore(other, inputs["input_ids"], inputs["attention_mask"],
                             config=LengthConfig((100, 50), 384, variant="match"))
        assert "\n" not in str(info.value)


def test_near_question_words_marks_the_neighbourhood_of_repeated_question_words():
    """A context token that repeats a word of the question marks MATCH_WIDTH tokens either side (context only,
    never the question); a question word the context repeats more than MATCH_MAX_REPEATS times, [CLS], [SEP] and
    padding mark nothing. Two rows with questions of different lengths."""
    def window(question: list[int], context: list[int], width: int) -> tuple[list[int], list[int], list[int]]:
        pad = width - len(question) - len(context)
        return (question + context + [0] * pad, [0] * len(question) + [1] * len(context) + [0] * pad,
                [1] * (len(question) + len(context)) + [0] * pad)

    def around(starts: list[int], first: int, last: int) -> set[int]:
        return {p for s in starts for p in range(s - MATCH_WIDTH, s + MATCH_WIDTH + 1) if first <= p <= last}

    context = list(range(1000, 1100))
    context[50] = 7  # w7 once: marks
    for i in range(MATCH_MAX_REPEATS):
        context[70 + 10 * i] = 9  # w9 exactly MATCH_MAX_REPEATS times: marks
    for i in range(MATCH_MAX_REPEATS + 1):
        context[5 + 11 * i] = 8  # w8 once too often: nothing
    context[2] = 101  # [CLS] repeated in the context: nothing
    context[99] = 102  # the closing [SEP] repeats the question's [SEP]: nothing
    first = window([101, 7, 8, 9, 102], context, 112)
    short = list(range(2000, 2060))
    short[1] = 5  # the band of this match reaches back over the question: only context is marked
    second = window([101, 5, 102], short, 112)
    ids, types, mask = (torch.tensor([a, b]) for a, b in zip(first, second))
    near = near_question_words(ids, mask, types, torch.tensor([[5], [3]]))
    assert set(near[0].nonzero().flatten().tolist()) == around([5 + 50, *(5 + 70 + 10 * i for i in range(MATCH_MAX_REPEATS))], 5, 104)
    assert set(near[1].nonzero().flatten().tolist()) == around([3 + 1], 3, 62)


def test_match_variant_keeps_the_question_then_its_words_neighbourhood(windows):
    """On real dev windows, `match` keeps the question segment first and then the context near its words: a layer
    that keeps fewer tokens than both together keeps only them; a layer that keeps more keeps all of them."""
    model = tiny_model("bert", 3, seed=2)
    inputs = {k: torch.from_numpy(v[:4]) for k, v in windows.model_inputs().items()}
    question_len = ((inputs["token_type_ids"] == 0) & (inputs["attention_mask"] > 0)).sum(1, keepdim=True)
    near = near_question_words(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], question_len)
    favoured = [set(range(int(n_q))) | set(row.nonzero().flatten().tolist())
                for n_q, row in zip(question_len[:, 0], near)]
    assert min(len(f) for f in favoured) > 30 and max(len(f) for f in favoured) < 200  # real matches, not all
    keep = (300, 30, 6)
    with torch.no_grad():
        *_, kept = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384, variant="match"), return_kept=True)
        *_, kept_qtool = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384), return_kept=True)
    for row, chosen in enumerate(favoured):
        assert set(kept[0][row].tolist()) >= chosen
        assert set(kept[1][row].tolist()) <= chosen
        assert sorted(kept[2][row].tolist()) == list(range(6))  # the question before its words' neighbourhood
    assert any(not set(k[row].tolist()) <= chosen for row, chosen in enumerate(favoured) for k in kept_qtool[1:2])


def test_answer_variant_ranks_the_rest_by_the_qa_heads_answer_score(windows):
    """`answer` keeps what `match` favours first (the question, then the context near its words); the tokens a layer
    keeps beyond those are the ones the QA head scores highest (the higher of start and end logit) on that layer's
    attention output, not the ones that receive the most attention. Read off the head's own calls (a hook)."""
    model = tiny_model("bert", 3, seed=3)
    inputs = {k: torch.from_numpy(v[:3]) for k, v in windows.model_inputs().items()}
    question_len = ((inputs["token_type_ids"] == 0) & (inputs["attention_mask"] > 0)).sum(1, keepdim=True)
    near = near_question_words(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], question_len)
    real = inputs["attention_mask"].sum(1)
    favoured_counts = question_len[:, 0] + near.sum(1)
    assert favoured_counts.max() < real.min()  # room at the first layer for tokens beyond the favoured
    keep = (int(favoured_counts.max() + real.min()) // 2, 40, 20)
    calls: list[torch.Tensor] = []
    hook = model.qa_outputs.register_forward_hook(lambda _m, _i, out: calls.append(out.detach()))
    try:
        with torch.no_grad():
            *_, kept = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384, variant="answer"),
                                        return_kept=True)
    finally:
        hook.remove()
    assert len(calls) == len(keep) + 1  # once per dropping layer, once for the answer
    with torch.no_grad():
        *_, kept_match = drop_and_restore(model, **inputs, config=LengthConfig(keep, 384, variant="match"),
                                          return_kept=True)
    layer0 = calls[0].max(dim=-1).values  # positions are still in order at the first layer
    for row, n_q in enumerate(question_len[:, 0].tolist()):
        favoured = set(range(n_q)) | set(near[row].nonzero().flatten().tolist())
        rest = [p for p in range(int(inputs["attention_mask"][row].sum())) if p not in favoured]
        best = sorted(rest, key=lambda p: -float(layer0[row, p]))[: keep[0] - len(favoured)]
        assert set(kept[0][row].tolist()) == favoured | set(best)
    assert any(set(a[row].tolist()) != set(b[row].tolist()) for a, b in zip(kept, kept_match) for row in range(3))


@pytest.mark.parametrize("variant, invariant", [("lat", False), ("match", True), ("answer", True)])
def test_recorded_variant_drives_export(variant, invariant, tmp_path, trained_dir, request):
    """A checkpoint whose config records a variant exports as that variant runs (validated against PyTorch), and
    says so. `lat` sees padding queries, so its graph must be fed padded; `match` does not. The `answer` graph is the
    run's shared one (conftest), exported the same way.

    The trained reference model, not a random model: LAT's significance adds the near-uniform
    attention of padding queries, which in a random model leaves near-ties that float rounding reorders."""
    artifact = (request.getfixturevalue("answer_graph") if variant == "answer"
                else export_recording_variant(trained_dir, variant, tmp_path))
    m = manifests.load(artifact)
    assert m.length_config.variant == variant and artifact.name == f"fp32-300-250-200-150-120-100-{variant}"
    assert m.validation["kept_agreement"] == [1.0] * 6
    assert m.invariant == invariant


@pytest.mark.parametrize("family", ["albert", "deberta"])
def test_unsupported_families_are_refused_in_one_line(family, tmp_path, minilm_tokenizer):
    import transformers as tf

    config_cls, model_cls = {"albert": (tf.AlbertConfig, tf.AlbertForQuestionAnswering),
                             "deberta": (tf.DebertaConfig, tf.DebertaForQuestionAnswering)}[family]
    config = config_cls(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model_cls(config).save_pretrained(tmp_path / family)
    minilm_tokenizer.save_pretrained(tmp_path / family)
    with pytest.raises(UnsupportedModelError) as info:
        load_qa_model(tmp_path / family)
    message = str(info.value)
    assert "\n" not in message and repr(family) in message
    for name in ("bert", "roberta", "distilbert", "electra"):
        assert name in message
