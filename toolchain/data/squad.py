"""SQuAD v1.1: read the official JSON, featurize for a fast tokenizer, turn logits into answers, score.

The metric follows the official v1.1 evaluation script: answers are normalised (lower-case, punctuation
and articles removed, white space collapsed) and each prediction takes the best EM/F1 over its gold answers.
"""

from __future__ import annotations

import os
import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Mapping, Sequence

from qtool_runtime.errors import QtoolError

import numpy as np
from qtool_runtime.kit import max_question_tokens
from qtool_runtime.spans import best_span

from ..core.errors import InputError
from ..core.windows import DOC_STRIDE, DOCUMENT_NEIGHBOURS, MAX_LENGTH, default_doc_stride  # noqa: F401 (squad.X)

MAX_ANSWER_LENGTH = 30
N_BEST = 20


def workload_name(neighbours: int) -> str:
    """How reports name the workload a `neighbours` setting builds."""
    return f"documents (paragraph + {neighbours} neighbours each side)" if neighbours else "paragraphs"


class SquadFormatError(QtoolError, ValueError):
    """The file is not SQuAD v1.1 JSON."""


@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def default_squad_dir() -> Path:
    """Where tests and benchmarks find SQuAD: $QTOOL_SQUAD_DIR, else ../shared/squad beside the checkout."""

    env = os.environ.get("QTOOL_SQUAD_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent.parent / "shared" / "squad"


def resolve_squad_file(name_or_path: str | Path) -> Path:
    """Accept 'train', 'dev' or a path to a SQuAD JSON file."""
    if str(name_or_path) in ("train", "dev"):
        path = default_squad_dir() / f"{name_or_path}-v1.1.json"
    else:
        path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD file not found: {path} (give a path to train-v1.1.json / dev-v1.1.json "
            "or set QTOOL_SQUAD_DIR)"
        )
    return path


V2_MESSAGE = "qtool scores SQuAD v1.1 only (v2.0 unanswerable questions are not supported)"


def _expect(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise SquadFormatError(f"{path}: {where} {what}; not SQuAD v1.1 JSON")


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def widen_contexts(data: dict, neighbours: int) -> dict:
    """The document workload: each paragraph's context becomes itself plus up to `neighbours` paragraphs of the
    same article on each side, joined by newlines (answer offsets shifted), so windows are full of real tokens
    as when a team answers over documents or retrieved multi-paragraph chunks. Questions stay the same."""
    articles = []
    for article in data["data"]:
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(p, dict) and _is_str(p.get("context")) for p in paragraphs):
            articles.append(article)  # load_squad's checks name the malformed place
            continue
        contexts = [p["context"] for p in paragraphs]
        wide = []
        for i, paragraph in enumerate(paragraphs):
            lo, hi = max(0, i - neighbours), min(len(contexts), i + neighbours + 1)
            prefix = "".join(c + "\n" for c in contexts[lo:i])
            shifted = [{**qa, "answers": [{**a, "answer_start": a["answer_start"] + len(prefix)}
                                          if isinstance(a, dict) and isinstance(a.get("answer_start"), int) else a
                                          for a in qa.get("answers", [])]}
                       if isinstance(qa, dict) and isinstance(qa.get("answers"), list) else qa
                       for qa in paragraph.get("qas", [])]
            wide.append({**paragraph, "context": prefix + "\n".join(contexts[i:hi]), "qas": shifted})
        articles.append({**article, "paragraphs": wide})
    return {**data, "data": articles}


def load_squad(path: str | Path, limit: int | None = None, offset: int = 0, neighbours: int = 0,
               ids: Collection[str] | None = None) -> list[SquadExample]:
    """Read SQuAD v1.1 JSON into flat examples, in file order; `offset`/`limit` take a slice of questions, `ids`
    only those questions of it; `neighbours` > 0 gives the document workload (`widen_contexts`).

    The whole file is checked, not just the slice, so a malformed or v2.0 file fails at once with one line
    naming the place (e.g. data[3].paragraphs[0].qas[2]) instead of a KeyError deep in a run.
    """
    if offset < 0:
        raise InputError(f"offset must be 0 or more, got {offset}")
    if limit is not None and limit < 1:
        raise InputError(f"limit must be a positive number of questions, got {limit}")
    if neighbours < 0:
        raise InputError(f"neighbours must be 0 or more paragraphs, got {neighbours}")
    path = resolve_squad_file(path)
    data = _read_squad_json(path)
    if neighbours:
        data = widen_contexts(data, neighbours)
    end = None if limit is None else offset + limit
    examples, index = [], 0
    for where, title, context, qa in _checked_questions(path, data):
        if index >= offset and (end is None or index < end) and (ids is None or qa["id"] in ids):
            examples.append(SquadExample(
                id=qa["id"], title=title, question=qa["question"].strip(), context=context,
                answers=tuple(ans["text"] for ans in qa["answers"]),
                answer_starts=tuple(ans["answer_start"] for ans in qa["answers"])))
        index += 1
    if index == 0:
        raise SquadFormatError(f"{path} holds no questions")
    if offset >= index:
        raise InputError(f"offset {offset} is past the end of {path} ({index} questions)")
    return examples


def _read_squad_json(path: Path) -> dict:
    """The file's JSON, refused in one line when it is not SQuAD v1.1's top level."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SquadFormatError(f"{path} is not UTF-8 text: not SQuAD v1.1 JSON") from exc
    except json.JSONDecodeError as exc:
        raise SquadFormatError(f"{path} is not JSON ({exc}); expected SQuAD v1.1 JSON") from exc
    _expect(isinstance(data, dict) and isinstance(data.get("data"), list), path, "the top level", 'has no "data" list')
    version = str(data.get("version", ""))
    if version.lstrip("v").startswith("2"):
        raise SquadFormatError(f"{path} is SQuAD version {version}: {V2_MESSAGE}")
    return data


def _checked_questions(path: Path, data: dict) -> Iterable[tuple[str, str, str, dict]]:
    """Every question in file order as (where, title, context, qa), each checked against SQuAD v1.1's shape."""
    seen: set[str] = set()
    for a, article in enumerate(data["data"]):
        _expect(isinstance(article, dict) and isinstance(article.get("paragraphs"), list), path, f"data[{a}]",
                'has no "paragraphs" list')
        title = article.get("title", "")
        title = title if _is_str(title) else ""
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            _expect(isinstance(paragraph, dict), path, where, "is not an object")
            _expect(_is_str(paragraph.get("context")), path, where, 'has no "context" string')
            _expect(isinstance(paragraph.get("qas"), list), path, where, 'has no "qas" list')
            for q, qa in enumerate(paragraph["qas"]):
                _check_question(path, f"{where}.qas[{q}]", qa, paragraph["context"], seen)
                yield f"{where}.qas[{q}]", title, paragraph["context"], qa


def _check_question(path: Path, where: str, qa: object, context: str, seen: set[str]) -> None:
    _expect(isinstance(qa, dict), path, where, "is not an object")
    if qa.get("is_impossible") or "plausible_answers" in qa:
        raise SquadFormatError(f"{path}: {where} is a SQuAD v2.0 question: {V2_MESSAGE}")
    _expect(_is_str(qa.get("id")), path, where, 'has no "id" string')
    _expect(_is_str(qa.get("question")), path, where, 'has no "question" string')
    _expect(qa["id"] not in seen, path, where, f"repeats the question id {qa['id']!r}")
    seen.add(qa["id"])
    answers = qa.get("answers", [])
    _expect(isinstance(answers, list), path, where, '"answers" is not a list')
    _expect(bool(answers), path, where, 'has no answers (every SQuAD v1.1 question has at least one; '
            'unanswerable questions are SQuAD v2.0, which qtool does not score)')
    for i, ans in enumerate(answers):
        _expect(
            isinstance(ans, dict) and _is_str(ans.get("text"))
            and isinstance(ans.get("answer_start"), int) and not isinstance(ans["answer_start"], bool)
            and 0 <= ans["answer_start"] <= len(context),
            path, f"{where}.answers[{i}]",
            'is not {"text": string, "answer_start": integer within the context}',
        )


@dataclass
class Features:
    """Tokenized windows of examples. Arrays share the first axis (one row per window)."""

    input_ids: np.ndarray  # int64 [n, L]
    attention_mask: np.ndarray  # int64 [n, L]
    token_type_ids: np.ndarray  # int64 [n, L]
    example_index: np.ndarray  # int64 [n]: which example a window came from
    offsets: np.ndarray  # int64 [n, L, 2]: char span in the context, (-1, -1) outside the context
    start_positions: np.ndarray | None = None  # training targets (token index, 0 = no answer in window)
    end_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self, rows: slice | np.ndarray | None = None) -> dict[str, np.ndarray]:
        sel = slice(None) if rows is None else rows
        return {
            "input_ids": self.input_ids[sel],
            "attention_mask": self.attention_mask[sel],
            "token_type_ids": self.token_type_ids[sel],
        }


FEATURIZE_CHUNK = 256  # questions tokenized at once: bounds the tokenizer's Python-object output, whatever the file size


def featurize(
    examples: Sequence[SquadExample],
    tokenizer,
    max_length: int = MAX_LENGTH,
    doc_stride: int = DOC_STRIDE,
    pad_to_max_length: bool = True,
    with_targets: bool = False,
) -> Features:
    """Split each question+context into overlapping windows with character offsets.

    Padding to `max_length` gives fixed-shape inputs for ONNX evaluation; training pads per batch instead.
    Questions are tokenized `FEATURIZE_CHUNK` at a time, so memory is the arrays plus one chunk's tokenizer
    output (all of SQuAD train at once held about 20 GB of Python lists).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("featurize needs a fast (Rust) tokenizer for offset mapping; the model folder has a slow one")
    if doc_stride >= max_length:
        raise InputError(f"doc_stride ({doc_stride}) must be smaller than max_length ({max_length})")
    parts = [_featurize_chunk(examples[lo: lo + FEATURIZE_CHUNK], lo, tokenizer, max_length, doc_stride,
                              pad_to_max_length, with_targets)
             for lo in range(0, len(examples), FEATURIZE_CHUNK)]
    if not parts:
        raise InputError("no questions to featurize")
    return concatenate(parts, pad_id=tokenizer.pad_token_id or 0)


def check_question_lengths(examples: Sequence[SquadExample], tokenizer, max_length: int, doc_stride: int) -> None:
    """Refuse a question too long for its windows (the tokenizer would panic): the kit's rule, one line."""
    limit = max_question_tokens(max_length, doc_stride, tokenizer.num_special_tokens_to_add(pair=True))
    lengths = [len(ids) for ids in tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]]
    for example, n in zip(examples, lengths):
        if n > limit:
            raise InputError(
                f"question {example.id!r} is {n} tokens; windows of {max_length} tokens with {doc_stride} tokens of "
                f"overlap hold questions of at most {limit} tokens (raise the sequence length or drop the question)")


def _featurize_chunk(examples: Sequence[SquadExample], first: int, tokenizer, max_length: int, doc_stride: int,
                     pad_to_max_length: bool, with_targets: bool) -> Features:
    check_question_lengths(examples, tokenizer, max_length, doc_stride)
    pad_right = tokenizer.padding_side == "right"
    enc = tokenizer(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding="max_length" if pad_to_max_length else False,
    )
    sample_map = enc.pop("overflow_to_sample_mapping")
    n = len(enc["input_ids"])
    width = max_length if pad_to_max_length else max(len(ids) for ids in enc["input_ids"])
    pad_id = tokenizer.pad_token_id or 0
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    token_type_ids = np.zeros((n, width), dtype=np.int64)
    offsets = np.full((n, width, 2), -1, dtype=np.int64)
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    for i in range(n):
        ids = enc["input_ids"][i]
        length = len(ids)
        input_ids[i, :length] = ids
        attention_mask[i, :length] = enc["attention_mask"][i]
        token_type_ids[i, :length] = enc["token_type_ids"][i]
        seq_ids = np.array([-1 if s is None else s for s in enc.sequence_ids(i)])
        context_tokens = np.nonzero(seq_ids == 1)[0]
        spans = np.asarray(enc["offset_mapping"][i], dtype=np.int64)
        offsets[i, context_tokens] = spans[context_tokens]
        if with_targets:
            starts[i], ends[i] = _answer_tokens(examples[sample_map[i]], spans, context_tokens)
    return Features(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        example_index=np.asarray(sample_map, dtype=np.int64) + first,
        offsets=offsets,
        start_positions=starts if with_targets else None,
        end_positions=ends if with_targets else None,
    )


def _answer_tokens(example: SquadExample, spans: np.ndarray, context_tokens: np.ndarray) -> tuple[int, int]:
    """Token targets of the first gold answer in one window; (0, 0) ([CLS]) when the window does not hold it."""
    if not example.answers or len(context_tokens) == 0:
        return 0, 0
    start_char = example.answer_starts[0]
    end_char = start_char + len(example.answers[0])
    ctx = spans[context_tokens]
    if ctx[0, 0] > start_char or ctx[-1, 1] < end_char:
        return 0, 0
    # last token starting at or before the answer, first token ending at or after it
    return int(context_tokens[ctx[:, 0] <= start_char][-1]), int(context_tokens[ctx[:, 1] >= end_char][0])


def concatenate(parts: list[Features], pad_id: int) -> Features:
    """One Features from parts of possibly different widths (unpadded chunks), one field at a time; the parts'
    example indices are kept as they are."""
    width = max(p.input_ids.shape[1] for p in parts)

    def cat(name: str, fill: int) -> np.ndarray:
        arrays = [getattr(p, name) for p in parts]
        if arrays[0].ndim == 1:
            return np.concatenate(arrays)
        padded = [a if a.shape[1] == width else
                  np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
                  for a in arrays]
        return np.concatenate(padded)

    targets = parts[0].start_positions is not None
    return Features(
        input_ids=cat("input_ids", pad_id), attention_mask=cat("attention_mask", 0),
        token_type_ids=cat("token_type_ids", 0), example_index=cat("example_index", 0), offsets=cat("offsets", -1),
        start_positions=cat("start_positions", 0) if targets else None,
        end_positions=cat("end_positions", 0) if targets else None,
    )


def postprocess(
    examples: Sequence[SquadExample],
    features: Features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = N_BEST,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, str]:
    """Pick, per example, the best-scoring context span (start <= end, at most `max_answer_length` tokens)."""
    if start_logits.shape[0] != len(features) or end_logits.shape[0] != len(features):
        raise ValueError(
            f"logits for {start_logits.shape[0]} windows, features have {len(features)}"
        )
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for row, ex in enumerate(features.example_index):
        by_example[int(ex)].append(row)
    predictions: dict[str, str] = {}
    for ex_index, example in enumerate(examples):
        # The deployment kit's decoder: what verify scores is what qtool_runtime answers.
        rows = by_example.get(ex_index, [])
        span = best_span(((start_logits[r], end_logits[r], features.offsets[r]) for r in rows), n_best, max_answer_length)
        predictions[example.id] = "" if span is None else example.context[span.start_char : span.end_char]
    return predictions


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1 normalisation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(predictions: Mapping[str, str], examples: Iterable[SquadExample]) -> tuple[np.ndarray, np.ndarray]:
    """EM and F1 of each example (0 to 1), each the max over its gold answers; a missing prediction scores 0.
    Per question, so two graphs scored on the same questions can be compared pairwise."""
    em, f1s = [], []
    for example in examples:
        pred = predictions.get(example.id)
        if pred is None or not example.answers:
            em.append(0.0)
            f1s.append(0.0)
            continue
        em.append(max(exact_match(pred, g) for g in example.answers))
        f1s.append(max(f1(pred, g) for g in example.answers))
    return np.asarray(em, dtype=np.float64), np.asarray(f1s, dtype=np.float64)


def squad_scores(predictions: Mapping[str, str], examples: Iterable[SquadExample]) -> dict[str, float]:
    """EM and F1 in percent, each the max over an example's gold answers; missing predictions score 0."""
    return scores_of(*question_scores(predictions, examples))


def scores_of(em: np.ndarray, f1s: np.ndarray) -> dict[str, float]:
    """squad_scores from the per-question scores (question_scores), for callers that keep those too."""
    if len(em) == 0:
        raise ValueError("no examples to score")
    return {"exact_match": 100.0 * float(em.mean()), "f1": 100.0 * float(f1s.mean()), "count": len(em)}
