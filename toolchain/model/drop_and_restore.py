"""Drop-and-Restore for BERT-family question answering (LAT, Kim & Cho 2021; Dynamic-TinyBERT).

Inside layer i, after self-attention, every token is scored by the attention it receives (summed over
heads and over non-padding queries; padding always scores last). Only the top k_i tokens go through the
feed-forward block and on to the next layer, so the cost of every later step shrinks. A dropped token
keeps the hidden state it had when it was dropped; before the QA head all tokens are put back at their
original positions, so span logits exist for every position. The `lat` variant follows LAT's own code
instead (see `length.VARIANTS`). The model's family (BERT, RoBERTa, DistilBERT, ELECTRA) is reached only
through its adapter in `toolchain.model.families`.

Position embeddings are added before the first layer and attention is permutation-equivariant, so kept
tokens need not stay in order: the gather uses TopK's order and the restore scatters back by position.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .families import Family, UnsupportedModelError, dims_of, family_of
from ..core.length import DEFAULT_VARIANT, LengthConfig
from qtool_runtime.contract import Variant

NEG_MASK = -10000.0  # additive attention mask; finite so INT8 graphs and bf16 stay NaN-free
ALWAYS_KEPT = 1e9  # significance that outranks any sum of attention ([CLS] under `lat`); a constant, not n-dependent
# `match`: a question token scores QUESTION_FIRST - position, above any sum of attention (at most heads * n) and
# exact in float32, so question tokens rank first, in order, with no ties for runtimes to break differently
QUESTION_FIRST = float(1 << 20)
# `match`: a context token near a word of the question scores its attention + MATCH_FIRST, above any sum of attention
# (heads * n < 2^14 for every supported family: at most 16 heads at 512 positions), below QUESTION_FIRST.
MATCH_FIRST = float(1 << 14)
ANSWER_SCORE_BOUND = float(1 << 12)  # `answer`: the rest's answer scores are clamped to +-this, below MATCH_FIRST
# Scores are ranked in float64: near 2^14 float32 resolves only 0.002 of attention, so the bonus rounded near tokens'
# attention into ties and near-ties that PyTorch and onnxruntime broke differently (a model exported or not by luck).
# In float64 the bonus is exact for every float32 attention sum above 2^-15, so tiers and attention rank
# lexicographically; equal scores keep their current order (a stable sort in PyTorch, ONNX TopK's lower index first).
RANK_DTYPE = torch.float64
MATCH_WIDTH = 12  # tokens either side of a context token that repeats a word of the question
MATCH_MAX_REPEATS = 2  # a question token the context repeats more often ("the", "of", "?") marks nothing
VARIANT_ATTRIBUTE = "qtool_drop_variant"  # where `qtool train` records the variant in the model's config.json


def flops(config: LengthConfig, hidden: int, ffn: int, length: int | None = None) -> int:
    """Multiply-adds of the encoder layers under `config` for an input of `length` tokens (default: seq_len).

    Layer i with n_in tokens in and n_out kept (by the configuration's length rule): 4*n_in*d^2 (Q, K, V,
    output projections) + 2*n_in^2*d (scores and context) + 2*n_out*d*d_ff (the FFN runs on kept tokens only).
    """
    total = 0
    length = config.seq_len if length is None else length
    n_in = length
    for i in range(len(config.keep)):
        if config.keep[i] is None:  # a skipped layer costs nothing
            continue
        n_out = n_in if config.is_full else config.keep_count(i, length, n_in)
        total += 4 * n_in * hidden**2 + 2 * n_in**2 * hidden + 2 * n_out * hidden * ffn
        n_in = n_out
    return total


def flops_ratio(config: LengthConfig, hidden: int, ffn: int) -> float:
    """FLOPs of `config` relative to the full model at the same sequence length."""
    return flops(config, hidden, ffn) / flops(LengthConfig.full(len(config.keep), config.seq_len), hidden, ffn)


def check_supported(model: nn.Module) -> Family:
    """Refuse models whose layers we cannot run token by token; return the model's family adapter."""
    config = getattr(model, "config", None)
    family = family_of(config)
    if not hasattr(model, "qa_outputs"):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no QA head (qa_outputs); load it with AutoModelForQuestionAnswering"
        )
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError("only absolute position embeddings are supported")
    return family


def trained_variant(model: nn.Module) -> str:
    """The Drop-and-Restore variant the checkpoint was trained with (`qtool train` records it; default qtool)."""
    return recorded_variant(model.config)


def recorded_variant(config) -> str:
    """The variant a transformers config records (see trained_variant), for callers that load no weights."""
    return getattr(config, VARIANT_ATTRIBUTE, None) or DEFAULT_VARIANT


@contextmanager
def quiet_transformers():
    """transformers' loading warnings off for a block (missing weights are checked, or expected, by the caller)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_qa_model(path: str | Path) -> tuple[nn.Module, object]:
    """Load a fine-tuned QA checkpoint and its fast tokenizer from a local folder, no network.

    Refuses a folder whose QA head (or any other weight) is not in the checkpoint: transformers would fill it
    with random values and the model would answer nonsense without any error.
    """
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        family_of(config)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{path}: {exc}") from exc
    weight_files = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    if not any((path / name).is_file() for name in weight_files):
        raise FileNotFoundError(f"{path} has no weights (model.safetensors or pytorch_model.bin)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(
            f"{path} has no tokenizer files (tokenizer.json or vocab.txt); save the tokenizer beside the model"
        )
    # transformers would only warn and fill missing weights (typically the QA head) with random values
    with quiet_transformers():
        model, info = AutoModelForQuestionAnswering.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", output_loading_info=True
        )
    missing = sorted(info.get("missing_keys", [])) + sorted(k for k, *_ in info.get("mismatched_keys", []))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UnsupportedModelError(
            f"{path}: {shown} {'was' if len(missing) == 1 else 'were'} not in the checkpoint: "
            "this is not a trained QA model"
        )
    check_supported(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot load the tokenizer: {exc}".splitlines()[0]) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"{path}: no fast tokenizer could be built (need tokenizer.json or vocab.txt)")
    model.eval()
    return model, tokenizer


def _attention(family: Family, heads: int, layer: nn.Module, h: torch.Tensor,
               mask_add: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention sublayer (with its residual and LayerNorm); also returns the attention probs."""
    query, key, value, dropout = family.attention(layer)
    b, n, d = h.shape
    dh = d // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, n, heads, dh).transpose(1, 2)

    q, k, v = split(query(h)), split(key(h)), split(value(h))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + mask_add
    probs = torch.softmax(scores, dim=-1)
    context = torch.matmul(dropout(probs), v).transpose(1, 2).reshape(b, n, heads * dh)
    return family.attention_output(layer, context, h), probs


def significance(probs: torch.Tensor, mask: torch.Tensor, variant: str = Variant.QTOOL,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """Attention each token receives, summed over heads and queries; padding gets -1 (ranks last).

    Given the tokens' original `positions`, padding ranks last in position order (-1 - 1e-4 * position):
    no ties, so every runtime keeps the same padding tokens (under `lat` the padding queries that stay
    change the significance of real tokens).

    `qtool` sums over real queries only (the answer does not depend on how much padding there is); `lat`
    sums over all queries, as LAT's code does. The query mask enters as a matrix-vector product, so the
    [batch, heads, n, n] probabilities are read once and never copied.
    """
    if Variant(variant) == Variant.LAT:
        received = probs.sum(dim=(1, 2))
    else:
        queries = mask[:, None, None, :].to(probs.dtype)  # [B, 1, 1, n]
        received = torch.matmul(queries, probs).sum(dim=(1, 2))  # [B, n]
    padding = torch.full_like(received, -1.0) if positions is None else -1.0 - positions.to(received.dtype) * 1e-4
    return torch.where(mask > 0, received, padding)


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, j]] for a [B, n, d] tensor: one row gather on the flattened [B*n, d] tensor.

    Cheaper in the graph than GatherElements, which needs the index expanded to [B, k, d].
    """
    b, n = x.shape[0], x.shape[1]
    offsets = (torch.arange(b, device=x.device) * n).unsqueeze(1)
    rows = (index + offsets).reshape(-1)
    return torch.index_select(x.reshape(b * n, x.shape[-1]), 0, rows).reshape(b, index.shape[1], x.shape[-1])


def drop_and_restore(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    config: LengthConfig | None = None,
    skip_layers: Sequence[int] = (),
    return_kept: bool = False,
    keep_counts: torch.Tensor | None = None,
    scores_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
):
    """Run a BERT QA model with Drop-and-Restore; returns (start_logits, end_logits[, kept positions per layer]).

    `keep_counts` (int64 [layers], the run-time configuration graph's input) replaces the configuration's counts:
    layer i keeps min(keep_counts[i], tokens that arrive), the cap rule; `config` then only says which layers
    are skipped and the variant. `scores_out`, if given, collects each dropping layer's (positions, ranking scores)
    as it ranked them: what export's validation reads to tell a near tie broken the other way from a wrong graph.

    `config=None` or a full configuration runs every token through every layer (the plain model).
    A configuration's skipped layers, and `skip_layers` (LayerDrop in training), pass hidden states through
    untouched: the graph has no nodes for them. Each layer sorts its tokens by significance once: the
    first k go on, the rest are set aside with their positions; one scatter at the end puts every token
    back, which is cheaper than restoring layer by layer.
    """
    family = family_of(model)
    encoder_layers = family.encoder_layers(model)
    heads = family.dims(model.config).heads
    if config is not None:
        config.validate(len(encoder_layers))
        if config.full_up_to and keep_counts is None:  # a routed configuration: the batch's longest window decides
            config = config.for_window(int(attention_mask.sum(dim=1).max()))
        skip_layers = tuple(skip_layers) + config.skipped
    h = family.embed(model, input_ids, attention_mask, token_type_ids)
    b, seq_len = input_ids.shape[0], input_ids.shape[1]
    mask = attention_mask.to(h.dtype)
    positions = torch.arange(seq_len, device=h.device).unsqueeze(0).expand(b, seq_len)
    dropping = keep_counts is not None or (config is not None and not config.is_full)
    variant = Variant(config.variant) if dropping else None
    question_len = _question_len(family, attention_mask, token_type_ids) if dropping and variant.keeps_question else None
    near = near_question_words(input_ids, attention_mask, token_type_ids, question_len) if (
        dropping and variant.favours_question_words) else None
    answer_head = family.qa_head(model) if dropping and variant.ranks_by_answer_score else None
    set_aside: list[tuple[torch.Tensor, torch.Tensor]] = []  # (hidden states, positions) of dropped tokens
    kept: list[torch.Tensor] = []

    for i, layer in enumerate(encoder_layers):
        if i in skip_layers:
            if return_kept:
                kept.append(positions)
            if scores_out is not None and dropping:  # aligned with `kept`: a skipped layer ranks nothing
                scores_out.append((positions, torch.full(positions.shape, float("nan"), dtype=RANK_DTYPE)))
            continue
        mask_add = (1.0 - mask)[:, None, None, :] * NEG_MASK
        a, probs = _attention(family, heads, layer, h, mask_add)
        if dropping:
            n_in = h.shape[1]
            k = config.keep_count(i, seq_len, n_in) if keep_counts is None else _input_count(keep_counts, i, n_in)
            a, mask, positions, aside = _drop(h, a, probs, mask, positions, n_in, k, variant, question_len, near,
                                              scores_out, answer_head)
            set_aside.append(aside)
        h = family.feed_forward(layer, a)
        if return_kept:
            kept.append(positions)
    if dropping:
        h = _restore(set_aside, h, positions)
    logits = family.qa_head(model)(h)
    start_logits, end_logits = logits[..., 0], logits[..., 1]
    if return_kept:
        return start_logits, end_logits, kept
    return start_logits, end_logits


def _question_len(family: Family, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """Tokens in each window's question segment ([CLS] question [SEP]: the real tokens of type 0, a prefix), [B, 1]."""
    if token_type_ids is None or "token_type_ids" not in family.inputs:
        raise UnsupportedModelError(
            f"the '{Variant.MATCH}' and '{Variant.ANSWER}' variants find the question by its token type; "
            f"{family.model_type} has no token_type_ids (use qtool or lat)")
    return ((token_type_ids == 0) & (attention_mask > 0)).sum(dim=1, keepdim=True)


def near_question_words(input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                        question_len: torch.Tensor) -> torch.Tensor:
    """[B, n] bool: context tokens within MATCH_WIDTH tokens of a context token that repeats a token of the question.

    Question tokens are positions 1 .. question_len - 2 (not [CLS], not [SEP]); one the context repeats more than
    MATCH_MAX_REPEATS times marks nothing. Matrix products of 0/1 matrices: the comparisons (a count <= 2, a sum
    > 0) are exact in float32 and in bf16 (autocast), so the graph marks what PyTorch marks.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    question = ((positions >= 1) & (positions < question_len - 1)).float()  # [B, n]
    context = ((token_type_ids == 1) & (attention_mask > 0)).float()
    same = (input_ids.unsqueeze(2) == input_ids.unsqueeze(1)).float()  # [B, n, n], symmetric
    repeats = torch.matmul(context.unsqueeze(1), same).squeeze(1)  # [B, n]: context tokens equal to token j
    words = question * (repeats <= MATCH_MAX_REPEATS).float()
    match = (torch.matmul(same, words.unsqueeze(2)).squeeze(2) > 0).float() * context
    band = ((positions.unsqueeze(1) - positions.unsqueeze(0)).abs() <= MATCH_WIDTH).float()  # [n, n]
    return (torch.matmul(match, band) > 0) & (context > 0)


def _drop(h: torch.Tensor, a: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, n_in,
          k, variant: str, question_len: torch.Tensor | None = None, near: torch.Tensor | None = None,
          scores_out: list[tuple[torch.Tensor, torch.Tensor]] | None = None, answer_head: nn.Module | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One layer's drop: sort tokens by significance once, keep the first k (their attention output, mask and
    positions) and set the rest aside with their positions. `question_len` ([B, 1]): the question segment ranks
    first; `near` ([B, seq_len] by original position, `match` and `answer`): those context tokens rank next;
    `answer_head` (the `answer` variant): the rest rank by its answer score (answer_score) instead of attention."""
    lat = variant == Variant.LAT
    score = significance(probs, mask, variant, positions).to(RANK_DTYPE)
    if lat:  # LAT always keeps [CLS]
        score = torch.where(positions == 0, torch.full_like(score, ALWAYS_KEPT), score)
    if near is not None:
        rest = score if answer_head is None else answer_score(answer_head, a, mask, positions)
        score = torch.where(torch.gather(near, 1, positions), score + MATCH_FIRST, rest)
    if question_len is not None:
        score = torch.where(positions < question_len, QUESTION_FIRST - positions.to(score.dtype), score)
    if scores_out is not None:
        scores_out.append((positions, score))
    order = _ranked(score)
    top, rest = order[:, :k], order[:, k:]
    # qtool: a dropped token keeps its post-attention state from the layer that dropped it;
    # lat: it keeps the output of the last layer that kept it (this layer's input)
    aside = (take_rows(h if lat else a, rest), torch.gather(positions, 1, rest))
    return take_rows(a, top), torch.gather(mask, 1, top), torch.gather(positions, 1, top), aside


def answer_score(answer_head: nn.Module, a: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, n] in RANK_DTYPE: the higher of each token's start and end logits from the QA head on this layer's attention
    output, the state a token dropped here is restored with, so the head reads it as it will at the end; padding
    ranks last in position order (below any logit).

    Why: on documents most of what dropping costs is the answer's own tokens dropped by a layer that kept the
    question's words instead (results/answer-ranking); the head trained to find the answer ranks them higher
    than the attention they receive does. A [n, d] x [d, 2] product per layer: nothing next to the layer."""
    logits = answer_head(a).float()
    # clamped well below MATCH_FIRST, so the tiers hold whatever the head says (real logits are tens at most)
    score = torch.maximum(logits[..., 0], logits[..., 1]).clamp(-ANSWER_SCORE_BOUND, ANSWER_SCORE_BOUND).to(RANK_DTYPE)
    return torch.where(mask > 0, score, -ALWAYS_KEPT - positions.to(RANK_DTYPE))


def _ranked(score: torch.Tensor) -> torch.Tensor:
    """Indices of each row of `score` by descending value, equal values in their current order: ONNX TopK's rule
    (lower index first), which the exported graph runs. torch.topk promises no order for ties, so eager PyTorch sorts
    stably; the exporter has no stable sort, so a trace takes TopK."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return torch.topk(score, score.shape[1], dim=1).indices
    return torch.sort(score, dim=1, descending=True, stable=True).indices


def _restore(set_aside: list[tuple[torch.Tensor, torch.Tensor]], h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Every token back at its position in one move: the set-aside states and the last layer's output."""
    states = torch.cat([s for s, _ in set_aside] + [h], dim=1)
    where = torch.cat([p for _, p in set_aside] + [positions], dim=1)
    b, seq_len = where.shape
    # invert the permutation on the small [B, L] index, then move whole rows once
    source = torch.zeros_like(where).scatter(1, where, torch.arange(seq_len, device=h.device).expand(b, seq_len))
    return take_rows(states, source)


def _input_count(keep_counts: torch.Tensor, layer: int, n_in):
    """min(keep_counts[layer], n_in), at least 1: a data-dependent size that torch.export carries as unbacked."""
    k = keep_counts[layer].item()
    torch._check(k >= 1)
    return torch.sym_min(k, n_in) if not isinstance(n_in, int) or not isinstance(k, int) else min(k, n_in)


class DropAndRestoreQA(nn.Module):
    """A QA model fixed to one length configuration: the module that `export` traces."""

    def __init__(self, model: nn.Module, config: LengthConfig, return_kept: bool = False):
        super().__init__()
        check_supported(model)
        config.validate(dims_of(model).layers)
        self.model = model
        self.config = config
        self.return_kept = return_kept

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None):
        return drop_and_restore(
            self.model, input_ids, attention_mask, token_type_ids, self.config, return_kept=self.return_kept
        )


class RuntimeConfigQA(nn.Module):
    """A QA model whose keep counts are an input (`keep_counts`): the module the run-time configuration graph
    traces. `layout` is its full configuration; the layers it skips stay an export-time choice."""

    def __init__(self, model: nn.Module, layout: LengthConfig):
        super().__init__()
        check_supported(model)
        layout.validate(dims_of(model).layers)
        self.model = model
        self.layout = layout

    def forward(self, *inputs: torch.Tensor):
        """The family's model inputs in order, then keep_counts (DistilBERT has no token_type_ids)."""
        named = dict(zip(family_of(self.model).inputs, inputs[:-1]))
        return drop_and_restore(self.model, named["input_ids"], named["attention_mask"], named.get("token_type_ids"),
                                self.layout, return_kept=True, keep_counts=inputs[-1])
