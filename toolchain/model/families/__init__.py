"""Model-family adapters: each maps one transformers family onto the roles the rest of qtool speaks.

Drop-and-Restore, export, node roles and quantization recipes only ever ask a `Family` for the
embeddings, the encoder layers, the attention projections, the attention-output and feed-forward
sublayers and the QA head. One small module per family (bert, roberta, distilbert, electra) fills
them in, so a recipe written once works for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

from qtool_runtime.errors import QtoolError

import torch
from torch import nn

# The weight MatMuls a quantization recipe selects from, by role; every family has these.
ROLES = ("q", "k", "v", "attn_out", "ffn_in", "ffn_out", "head")
# Roles only some families have (ELECTRA's projection from embedding size to hidden size).
OPTIONAL_ROLES = ("embed_proj",)


class UnsupportedModelError(QtoolError, ValueError):
    """The checkpoint is not a question-answering model of a family qtool can run token by token."""


@dataclass(frozen=True)
class Dims:
    layers: int
    hidden: int
    ffn: int
    heads: int
    max_positions: int


@dataclass(frozen=True)
class Family:
    """How one transformers family is laid out; every callable takes the QA model or one encoder layer."""

    model_type: str
    inputs: tuple[str, ...]  # graph inputs: no token_type_ids where the family has none
    dims: Callable[[object], Dims]  # from the transformers config
    encoder_layers: Callable[[nn.Module], nn.ModuleList]
    embed: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
    # layer -> (query, key, value, attention-probability dropout) modules
    attention: Callable[[nn.Module], tuple[nn.Module, nn.Module, nn.Module, nn.Module]]
    # (layer, context, layer input) -> post-attention state (output projection, residual, LayerNorm)
    attention_output: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    # (layer, post-attention state) -> layer output (FFN in, activation, FFN out, residual, LayerNorm)
    feed_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    # layer -> {"attn_out": module, "ffn_in": module, "ffn_out": module}
    layer_linears: Callable[[nn.Module], dict[str, nn.Module]]
    qa_head: Callable[[nn.Module], nn.Module] = lambda model: model.qa_outputs
    # model -> {optional role: modules} for weight MatMuls outside the layers (see OPTIONAL_ROLES)
    extra_roles: Callable[[nn.Module], dict[str, list[nn.Module]]] = lambda model: {}

    def role_modules(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """The Linear modules playing each role, layer by layer, then the QA head."""
        roles: dict[str, list[nn.Module]] = {r: [] for r in ROLES}
        for layer in self.encoder_layers(model):
            q, k, v, _ = self.attention(layer)
            for role, module in (("q", q), ("k", k), ("v", v), *self.layer_linears(layer).items()):
                roles[role].append(module)
        roles["head"].append(self.qa_head(model))
        roles.update({r: list(m) for r, m in self.extra_roles(model).items() if m})
        return roles

    def role_paths(self, model: nn.Module) -> dict[str, list[str]]:
        """Module paths by role (`bert.encoder.layer.3.output.dense`); export names nodes after them."""
        names = {id(m): name for name, m in model.named_modules()}
        return {role: [names[id(m)] for m in modules] for role, modules in self.role_modules(model).items()}


@cache
def _registry() -> dict[str, Family]:
    from . import bert, distilbert, electra, roberta

    return {f.model_type: f for f in (bert.FAMILY, roberta.FAMILY, distilbert.FAMILY, electra.FAMILY)}


def supported() -> tuple[str, ...]:
    return tuple(_registry())


def family_of(model_or_config) -> Family:
    """The adapter for a model (or its config); refuses other families with one line naming the supported ones."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    family = _registry().get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; qtool runs {', '.join(supported())} "
            "(Drop-and-Restore needs a post-LayerNorm encoder with plain self-attention)"
        )
    return family


def dims_of(model_or_config) -> Dims:
    config = getattr(model_or_config, "config", model_or_config)
    return family_of(config).dims(config)


def bert_like(model_type: str, *, base: str, inputs: tuple[str, ...], embed, dims=None, extra_roles=None) -> Family:
    """A family whose encoder is BERT's (`<base>.encoder.layer[i]` with attention.self.query/key/value,
    attention.output, intermediate, output): BERT, RoBERTa, ELECTRA differ only in embeddings and inputs."""
    return Family(
        model_type=model_type, inputs=inputs, dims=dims or bert_like_dims,
        encoder_layers=lambda model: getattr(model, base).encoder.layer, embed=embed,
        attention=bert_like_attention, attention_output=bert_like_attention_output,
        feed_forward=bert_like_feed_forward, layer_linears=bert_like_layer_linears,
        **({"extra_roles": extra_roles} if extra_roles else {}),
    )


def bert_like_dims(config) -> Dims:
    return Dims(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                config.num_attention_heads, config.max_position_embeddings)


def bert_like_layer_linears(layer: nn.Module) -> dict[str, nn.Module]:
    return {"attn_out": layer.attention.output.dense, "ffn_in": layer.intermediate.dense, "ffn_out": layer.output.dense}


def bert_like_attention(layer: nn.Module):
    sa = layer.attention.self
    return sa.query, sa.key, sa.value, sa.dropout


def bert_like_attention_output(layer: nn.Module, context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return layer.attention.output(context, h)


def bert_like_feed_forward(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return layer.output(layer.intermediate(a), a)
