"""DistilBERT (LAT's second family; the triple-compressed BERT): `distilbert.transformer.layer[i]` with
q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn.lin1/lin2, output_layer_norm; no token types."""

from __future__ import annotations

import torch

from . import Dims, Family


def _dims(config) -> Dims:
    return Dims(config.n_layers, config.dim, config.hidden_dim, config.n_heads, config.max_position_embeddings)


def _embed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    return model.distilbert.embeddings(input_ids)


def _attention(layer):
    a = layer.attention
    return a.q_lin, a.k_lin, a.v_lin, a.dropout


def _attention_output(layer, context: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return layer.sa_layer_norm(layer.attention.out_lin(context) + h)


def _feed_forward(layer, a: torch.Tensor) -> torch.Tensor:
    ffn = layer.ffn
    return layer.output_layer_norm(ffn.dropout(ffn.lin2(ffn.activation(ffn.lin1(a)))) + a)


FAMILY = Family(
    model_type="distilbert",
    inputs=("input_ids", "attention_mask"),
    dims=_dims,
    encoder_layers=lambda model: model.distilbert.transformer.layer,
    embed=_embed,
    attention=_attention,
    attention_output=_attention_output,
    feed_forward=_feed_forward,
    layer_linears=lambda layer: {"attn_out": layer.attention.out_lin, "ffn_in": layer.ffn.lin1, "ffn_out": layer.ffn.lin2},
)
