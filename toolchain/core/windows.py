"""How SQuAD windows are cut and fed: the window length and overlap, the document workload's width, and the
protocols a graph is scored under. Below data and graph, so every stage's settings (core.settings) can state
their defaults from them."""

from __future__ import annotations

import numpy as np
from qtool_runtime.contract import Mode, length_runs

MAX_LENGTH = 384
DOC_STRIDE = 128

# The document workload's construction (reports on dev, tuning and search on held-out train): each question's
# context is its paragraph plus this many neighbouring paragraphs of the same article on each side.
DOCUMENT_NEIGHBOURS = 2


def default_doc_stride(seq_len: int) -> int:
    """SQuAD's usual 128-token window overlap, or half the window for short windows (the one default)."""
    return min(DOC_STRIDE, seq_len // 2)


class Protocol(Mode):
    """How windows are fed to a graph when it is scored."""

    PADDED = "padded"  # the papers' protocol: batches of windows, each padded to seq_len
    UNPADDED = "unpadded"  # every window alone at its real length (what the kit does for dynamic graphs)
    BUCKETED = "bucketed"  # length-sorted batches, each padded to its longest window (the kit for static graphs)

    def groups(self, lengths: np.ndarray, batch_size: int, *, threshold: int = 0) -> list[np.ndarray]:
        """The rows that share a run, in the order they run; a routed graph's `threshold` (its full_up_to): no run
        mixes windows on both sides of it (contract.length_runs)."""
        if self == Protocol.UNPADDED:
            return [np.array([row]) for row in range(len(lengths))]
        runs = length_runs([int(n) for n in lengths], batch_size, threshold=threshold, sort=self == Protocol.BUCKETED)
        return [np.array(rows, dtype=np.int64) for rows in runs]


PROTOCOLS = Protocol.choices()
