"""Graph rewrites as passes that state what they require and what they ensure, and count what they rewrite.

framework      GraphPass, run_passes (checks each pass's requirement and promise), PassRun (rewrite counts)
graph_utils    ONNX helpers the passes share: readers and writers of tensors, subgraphs, free names, constants
tidy           name-nodes-by-module, drop-export-metadata (TIDY)
fuse_gelu, fuse_matmul_bias, fuse_attention, fuse_ranking_attention, fuse_qattention: one fusion each
pipelines      EXPORT_PASSES and INT8_PASSES, in their order
"""

from .framework import Check, GraphPass, GraphPassError, PassRun, run_passes
from .fuse_attention import FUSE_ATTENTION
from .fuse_gelu import FUSE_GELU
from .fuse_matmul_bias import FUSE_MATMUL_BIAS
from .fuse_qattention import FUSE_QATTENTION
from .fuse_ranking_attention import FUSE_RANKING_ATTENTION
from .graph_utils import MS_DOMAIN, consumers, defined_names, only_user, producers, subgraphs
from .pipelines import EXPORT_PASSES, INT8_PASSES
from .tidy import DROP_EXPORT_METADATA, NAME_NODES_BY_MODULE, NAME_SCOPES, TIDY

__all__ = [
    "Check", "GraphPass", "GraphPassError", "PassRun", "run_passes",
    "MS_DOMAIN", "consumers", "defined_names", "only_user", "producers", "subgraphs",
    "NAME_SCOPES", "NAME_NODES_BY_MODULE", "DROP_EXPORT_METADATA", "TIDY",
    "FUSE_GELU", "FUSE_MATMUL_BIAS", "FUSE_ATTENTION", "FUSE_RANKING_ATTENTION", "FUSE_QATTENTION",
    "EXPORT_PASSES", "INT8_PASSES",
]
