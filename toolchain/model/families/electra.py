"""ELECTRA: BERT's layers, plus a projection when the embedding size differs from the hidden size."""

from __future__ import annotations

import torch

from . import bert_like


def _embed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    h = model.electra.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    if hasattr(model.electra, "embeddings_project"):
        h = model.electra.embeddings_project(h)
    return h


def _extra_roles(model) -> dict:
    project = getattr(model.electra, "embeddings_project", None)
    return {"embed_proj": [project] if project is not None else []}


FAMILY = bert_like("electra", base="electra", inputs=("input_ids", "attention_mask", "token_type_ids"), embed=_embed,
                   extra_roles=_extra_roles)
