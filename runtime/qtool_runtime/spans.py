"""The span decoder: best answer span over a question's windows. numpy only.

One implementation for what ships (qtool_runtime.Artifact) and what qtool measures (toolchain.data.squad.postprocess),
so a score in a verify report is the score of the decoder a deployment runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

N_BEST = 20
MAX_ANSWER_LENGTH = 30


@dataclass(frozen=True)
class Span:
    window: int  # which window of the question the span was found in
    start_token: int
    end_token: int  # inclusive
    score: float  # start logit + end logit
    start_char: int  # character offsets into the context: context[start_char:end_char] is the answer
    end_char: int


def best_span(
    windows: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> Span | None:
    """The highest start+end logit span over all windows, or None when no window allows one.

    Each window is (start_logits [L], end_logits [L], offsets [L, 2]) with offsets (-1, -1) on tokens outside
    the context (question, special tokens, padding). Per window, the top `n_best` context starts and ends are
    paired; a span needs start <= end and at most `max_answer_length` tokens. Ties keep the first span found.
    """
    best: Span | None = None
    best_score = -np.inf
    for w, (start_logits, end_logits, offsets) in enumerate(windows):
        width = min(start_logits.shape[0], offsets.shape[0])
        s_log, e_log = start_logits[:width], end_logits[:width]
        valid = offsets[:width, 0] >= 0
        s_idx = np.argsort(s_log)[::-1]
        e_idx = np.argsort(e_log)[::-1]
        s_idx = s_idx[valid[s_idx]][:n_best]
        e_idx = e_idx[valid[e_idx]][:n_best]
        for s in s_idx:
            for e in e_idx:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = s_log[s] + e_log[e]
                if score > best_score:
                    best_score = score
                    best = Span(w, int(s), int(e), float(score), int(offsets[s, 0]), int(offsets[e, 1]))
    return best
