"""The calibration windows every static recipe reads: qtool's (INC) and the OpenVINO peer's (NNCF) alike.

A shipped set of SQuAD train questions (offline, never dev, never the search's or tuning's questions), or any SQuAD
v1.1 file, cut into the windows the graph will run.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from qtool_runtime.errors import QtoolError

from . import squad

CALIBRATION_SETS = {"squad": "squad-train-300.json"}


class CalibrationSetError(QtoolError, ValueError):
    """A calibration set that holds no questions."""


def calibration_examples(calib: str, samples: int, neighbours: int = 0) -> list[squad.SquadExample]:
    """'squad' = the calibration set shipped in the package (offline); else a path to SQuAD v1.1 JSON;
    `neighbours` > 0 widens the contexts (the document workload, squad.widen_contexts)."""
    if calib in CALIBRATION_SETS:
        path = Path(str(files("toolchain.calibration").joinpath(CALIBRATION_SETS[calib])))
    else:
        path = Path(calib)
        if not path.is_file():
            raise FileNotFoundError(f"calibration set {calib!r}: not a shipped set {list(CALIBRATION_SETS)} nor a file")
    examples = squad.load_squad(path, limit=samples, neighbours=neighbours)
    if not examples:
        raise CalibrationSetError(f"calibration set {calib!r} holds no questions")
    return examples


def calibration_features(calib: str, samples: int, tokenizer, seq_len: int, doc_stride: int,
                         neighbours: int = 0) -> squad.Features:
    """Windows of the first calibration questions, at most `samples`. With `neighbours` > 0, half of them come
    from the same questions with contexts widened by that many paragraphs on each side, so the static activation
    ranges also cover full windows of running text (the document workload), not only single paragraphs. Widening
    needs the neighbours in the file: a file of whole articles (SQuAD train) has them, the shipped set mostly not."""

    def windows(count: int, wide: int) -> squad.Features:
        f = squad.featurize(calibration_examples(calib, count, wide), tokenizer, max_length=seq_len, doc_stride=doc_stride)
        head = slice(0, count)
        return squad.Features(f.input_ids[head], f.attention_mask[head], f.token_type_ids[head], f.example_index[head],
                              f.offsets[head])

    if not neighbours:
        return windows(samples, 0)
    return squad.concatenate([windows(samples - samples // 2, 0), windows(samples // 2, neighbours)],
                             pad_id=tokenizer.pad_token_id or 0)
