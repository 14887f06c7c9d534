"""The pass lists export and quantize run, in their order."""

from __future__ import annotations

from .fuse_attention import FUSE_ATTENTION
from .fuse_gelu import FUSE_GELU
from .fuse_matmul_bias import FUSE_MATMUL_BIAS
from .fuse_qattention import FUSE_QATTENTION
from .fuse_ranking_attention import FUSE_RANKING_ATTENTION
from .tidy import TIDY

EXPORT_PASSES = (*TIDY, FUSE_GELU, FUSE_ATTENTION)  # every exported FP32 graph, before validation against PyTorch
# every quantized graph, before it is scored and timed (the bias first: QAttention packs GEMMs with their biases).
# Packing a reduced layer's Q, K, V GEMMs into one (and a Split) was tried and measured slower at batch 32 (1.61x
# against 1.68x the standard recipe on 384-token windows; the Split copies the packed output) and no faster at batch 1.
# `fuse-ranking-attention` last: it rewrites the attention cores `fuse-qattention` leaves (the ranking layers').
INT8_PASSES = (FUSE_MATMUL_BIAS, FUSE_QATTENTION, FUSE_RANKING_ATTENTION)
