"""BERT (and MiniLM, TinyBERT, Dynamic-TinyBERT): `bert.embeddings`, `bert.encoder.layer[i]`, token types."""

from __future__ import annotations

import torch

from . import bert_like


def _embed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    return model.bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)


FAMILY = bert_like("bert", base="bert", inputs=("input_ids", "attention_mask", "token_type_ids"), embed=_embed)
