"""RoBERTa (and QuaLA-MiniLM, a MiniLMv2 distilled from RoBERTa-large): BERT's layers, no token types,
positions counted from padding_idx + 1 over real tokens only."""

from __future__ import annotations

import torch

from . import Dims, bert_like


def _dims(config) -> Dims:
    # positions start at padding_idx + 1: a table of 514 rows holds 512 tokens
    return Dims(config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
                config.max_position_embeddings - config.pad_token_id - 1)


def _embed(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    embeddings = model.roberta.embeddings
    # RoBERTa numbers real tokens from padding_idx + 1; padding sits at padding_idx. Counting over the
    # attention mask (not over a pad token id) keeps positions right whatever id the padding carries.
    mask = attention_mask.to(torch.long)
    positions = torch.cumsum(mask, dim=1) * mask + embeddings.padding_idx
    # RoBERTa has one token type; ids a BERT-style tokenizer may produce are ignored.
    return embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids), position_ids=positions)


FAMILY = bert_like("roberta", base="roberta", inputs=("input_ids", "attention_mask"), embed=_embed, dims=_dims)
