"""Lexical overlap: how much of a question's wording its answer's sentence repeats, and the thirds it splits into.

SQuAD's annotators often copied the answer sentence's words into the question; users paraphrase more. A graph
that ranks tokens by their match with the question (the `match` variant) may hold on copied questions and fail on
paraphrased ones, so verify and search report F1 on each third, not only overall.

Definition (the one place it lives):
- content words: SQuAD's answer normalisation (lowercase, no punctuation, no articles), split on spaces, minus the
  function words in `FUNCTION_WORDS`;
- the answer's sentence: the sentence of the context (split after '.', '!' or '?' followed by space) holding the
  first gold answer (the sentences it spans, where a split falls inside it);
- overlap share: the question's distinct content words found in that sentence, over the question's distinct
  content words (0 when it has none);
- thirds: the scored questions sorted by share (ties by their order in the file), cut into three parts of equal
  size (low, middle, high). The cut shares are reported beside the scores.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

import numpy as np

from .squad import SquadExample, normalize_answer

FUNCTION_WORDS = frozenset(
    "what which who whom whose when where why how is are was were be been being do does did has have had of in on at "
    "to for from by with as and or but not no that this these those it its they them their he she his her i you we "
    "there than then so if into onto about after before during over under between through many much".split())
THIRDS = ("low", "middle", "high")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def content_words(text: str) -> set[str]:
    return {w for w in normalize_answer(text).split() if w not in FUNCTION_WORDS}


def answer_sentence(example: SquadExample) -> str:
    """The context's sentences that hold the first gold answer (one, unless the answer spans a split such as
    'C. J. Anderson'); '' without an answer."""
    if not example.answer_starts:
        return ""
    first, last = example.answer_starts[0], example.answer_starts[0] + max(len(example.answers[0]), 1)
    pieces, start = [], 0
    for piece in _SENTENCE_END.split(example.context):
        begin = example.context.find(piece, start)
        start = begin + len(piece)
        if start > first and begin < last:
            pieces.append(piece)
    return " ".join(pieces)


def sentences(text: str) -> list[str]:
    return [piece for piece in _SENTENCE_END.split(text) if piece]


def context_overlap(question: str, context: str) -> float:
    """What a router can know before the graph runs (the answer's sentence it cannot): the largest share of the
    question's content words that any one sentence of the context repeats."""
    words = content_words(question)
    if not words:
        return 0.0
    return max((len(words & content_words(s)) / len(words) for s in sentences(context)), default=0.0)


@lru_cache(maxsize=1 << 16)  # a search scores the same questions every trial
def overlap_share(example: SquadExample) -> float:
    """The share of the question's content words its answer's sentence repeats (0..1)."""
    question = content_words(example.question)
    if not question:
        return 0.0
    return len(question & content_words(answer_sentence(example))) / len(question)


def overlap_thirds(examples: Sequence[SquadExample]) -> tuple[np.ndarray, list[float]]:
    """Each question's third (0 low, 1 middle, 2 high) and the shares where the thirds begin (middle, high)."""
    shares = np.asarray([overlap_share(e) for e in examples], dtype=np.float64)
    order = np.argsort(shares, kind="stable")
    third = np.empty(len(examples), dtype=np.int64)
    for t, rows in enumerate(np.array_split(order, 3)):
        third[rows] = t
    cuts = [float(shares[rows[0]]) if len(rows) else float("nan") for rows in np.array_split(order, 3)[1:]]
    return third, cuts


def f1_by_third(question_f1: np.ndarray, third: np.ndarray) -> dict[str, float]:
    """Mean F1 (percent) of each third."""
    return {name: 100.0 * float(question_f1[third == t].mean()) if (third == t).any() else float("nan")
            for t, name in enumerate(THIRDS)}
