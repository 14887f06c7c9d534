"""Which SQuAD train questions a stage may draw: the search pool (never calibration or tuning questions, never dev)
and the questions a model's last training stage saw, which searches and menus leave out."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Iterator

from ..core.errors import InputError
from . import squad
from .calibration_windows import calibration_examples

# Search questions: SQuAD train before its last 2,000 questions (quantization tunes on the last 1,000).
SEARCH_POOL_END = 87_599 - 2_000


@functools.lru_cache(maxsize=4)
def _train_ids(train_file: Path) -> tuple[str, ...]:
    """Every question id of SQuAD train, in file order: read once per process and file (a search needs the pool and
    the last training stage's questions several times)."""
    return tuple(e.id for e in squad.load_squad(train_file))


@functools.lru_cache(maxsize=4)
def _search_pool(train_file: Path) -> tuple[str, ...]:
    """Ids of the questions the search may use, in file order: SQuAD train before SEARCH_POOL_END, less the
    calibration questions."""
    calib = {e.id for e in calibration_examples("squad", 10**9)}
    return tuple(i for i in _train_ids(train_file)[:SEARCH_POOL_END] if i not in calib)


def spread_ids(questions: int, offset: int = 0, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The ids of `questions` search questions spread evenly over the pool (see search_examples)."""
    pool = [i for i in _search_pool(squad.resolve_squad_file("train")) if i not in exclude]
    if questions > len(pool):
        raise InputError(f"--questions {questions} asks for more than SQuAD train holds for the search "
                         f"({len(pool)} questions)")
    stride = len(pool) / questions
    return [pool[(math.floor(i * stride) + offset) % len(pool)] for i in range(questions)]


def search_examples(questions: int, offset: int = 0, neighbours: int = 0,
                    exclude: frozenset[str] = frozenset()) -> list[squad.SquadExample]:
    """Questions for the search from SQuAD *train* (never dev), never calibration questions, and apart from the slice
    quantization tunes on, spread evenly over the pool: SQuAD groups questions by article (about 200 each), so a
    contiguous slice of a few hundred holds one or two articles, and configurations rank differently from article to
    article. `offset` shifts the spread by that many pool questions; `exclude`: ids never chosen (a confirmation
    leaves the search's questions out). `neighbours` > 0: the same questions with widened contexts (documents)."""
    order = {q: i for i, q in enumerate(spread_ids(questions, offset, exclude))}
    chosen = squad.load_squad("train", limit=SEARCH_POOL_END, neighbours=neighbours, ids=order)
    return sorted(chosen, key=lambda e: order[e.id])


def spread_dev(questions: int, neighbours: int = squad.DOCUMENT_NEIGHBOURS) -> list[squad.SquadExample]:
    """`questions` dev questions spread evenly over all of dev (its first thousand come from two articles), for
    reports; `neighbours`: contexts widened by that many paragraphs each side (documents by default)."""
    every = squad.load_squad("dev", neighbours=neighbours)
    if questions > len(every):
        raise InputError(f"{questions} questions asked for; SQuAD dev holds {len(every)}")
    return [every[i * len(every) // questions] for i in range(questions)]


def _training_records(model_dir: str | Path) -> list[Path]:
    """The model's `qtool train` records, latest first: the last run's (qtool_train.json), then numbered stage records."""
    return [*Path(model_dir).glob("qtool_train.json"), *sorted(Path(model_dir).glob("train-*.json"), reverse=True)]


def training_args(model_dir: str | Path) -> Iterator[tuple[Path, dict]]:
    """(record, its `args`) for each readable training record, latest first (unreadable records are skipped)."""
    for path in _training_records(model_dir):
        try:
            yield path, json.loads(path.read_text()).get("args", {})
        except (OSError, json.JSONDecodeError):
            continue


def trained_questions(model_dir: str | Path) -> frozenset[str]:
    """Ids of the SQuAD train questions the model's last training stage saw (its record's --limit from the start of
    train), which the search and its confirmation leave out: a stage scored on its own training questions looks
    better than it is. Empty when that stage read another file (e.g. widened contexts written out), trained on all of
    train (nothing is held out then), or left no record."""
    for _, args in training_args(model_dir):
        train = squad.resolve_squad_file("train")
        if args.get("limit") is None or not _same_file(args.get("train_file", "train"), train):
            return frozenset()
        return frozenset(_train_ids(train)[:int(args["limit"])])
    return frozenset()


def _same_file(name_or_path: str, path: Path) -> bool:
    """Whether a record's `--train-file` (the name 'train' or a path, as given where the stage ran) is `path`."""
    try:
        return squad.resolve_squad_file(name_or_path).resolve() == path.resolve()
    except (FileNotFoundError, OSError):
        return False
