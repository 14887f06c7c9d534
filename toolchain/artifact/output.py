"""One output rule for every command that writes, checked before any work.

A command writes *targets*: things it replaces whole (an artifact folder, a model folder, a JSON file, a verify
report). Some write them into a *root*, a folder that holds outputs (export's, standard's and bench's --out, verify's
--report-dir, train's --snapshot-dir): there it adds or replaces its own targets and touches nothing else.

1. A target is never one of the command's inputs, never holds one and never lies inside one; a root never is or lies
   inside an input (quantize writing beside its input is fine). Nothing is written inside an artifact folder.
2. An existing target is replaced only when it is an output of the same kind (what re-running does); an empty
   folder counts as new. Anything else is refused: qtool never deletes what it did not write.
3. A root that already holds something must be a root of the same kind (artifacts, model snapshots, a report).
4. The nearest existing folder must be writable.

Targets are then written under a staging name beside them and renamed into place (`atomic.staging_dir`), so a
failed run leaves what was there. There is no --overwrite: re-running already replaces a command's own outputs, and
what the rule refuses is something qtool did not write, which only its owner should move or delete.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from qtool_runtime.contract import MANIFEST, Precision

from ..core import atomic
from ..core.errors import InputError
from .manifest import Kind as ArtifactKind

CHECKPOINT_DIR = "checkpoint"  # where `qtool train` keeps its resumable state inside --out
# What only `qtool train` writes: its record in a finished model (or snapshot), its state in a run in progress. A
# config.json or a folder named checkpoint alone is any framework's model folder, which qtool never replaces.
MODEL_MARKERS = ("qtool_train.json", f"{CHECKPOINT_DIR}/trainer.pt")
REPORT_FILES = ("report.json", "report.md", "pareto.png")  # one verify report: report.json names the set


class OutputError(InputError):
    """A destination the command will not write: it is an input, or holds something that is not its own output."""


class OutputKind(Enum):
    """What a command writes, so an existing destination can be told apart from what it must never replace."""

    FP32_ARTIFACT = "an FP32 qtool artifact"  # export
    INT8_ARTIFACT = "an INT8 artifact"  # quantize (also --plain-ort)
    ROUTED_ARTIFACT = "a routed artifact"  # route
    STANDARD_ARTIFACT = "a standard-recipe artifact"  # standard
    MODEL = "a model folder"  # train (and its snapshots)
    SEARCH_RESULT = "a `qtool search` result"  # search --out
    LATENCY_MODEL = "a `qtool fit-latency` latency model"  # fit-latency --out
    REPORT = "a `qtool verify` report"  # verify: report.json (with report.md and pareto.png)

    def __str__(self) -> str:
        return self.value

    @property
    def is_file(self) -> bool:
        return self in (OutputKind.SEARCH_RESULT, OutputKind.LATENCY_MODEL, OutputKind.REPORT)

    def holds(self, path: Path) -> bool:
        """True when `path` is an output of this kind (so re-running may replace it)."""
        return _RECOGNISERS[self](Path(path))


class RootKind(Enum):
    """A folder that holds outputs: what it must already hold, if anything, for a command to add to it."""

    ARTIFACTS = "a folder of qtool artifacts"
    SNAPSHOTS = "a folder of model snapshots"
    REPORTS = "a report folder (an artifact root, or one holding a verify report)"

    def __str__(self) -> str:
        return self.value

    def holds_own(self, folder: Path) -> bool:
        """True when `folder` already holds outputs of this kind of root (so adding to it is what re-running does)."""
        children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if self is RootKind.SNAPSHOTS:
            return any(OutputKind.MODEL.holds(p) for p in children)
        if self is RootKind.REPORTS and OutputKind.REPORT.holds(folder / REPORT_FILES[0]):
            return True
        return any((p / MANIFEST).is_file() for p in children)


class Target(NamedTuple):
    """One thing a command replaces whole, and what it is."""

    path: Path
    kind: OutputKind


Inputs = Iterable[tuple[str, "str | Path | None"]]  # (how the user named it, e.g. '--full', its path); None: not given


def check_target(path: str | Path, kind: OutputKind, *, inputs: Inputs = (), option: str = "--out") -> Path:
    """Refuse a destination the command must not replace (rules 1, 2 and 4 of the module docstring); returns it."""
    path = Path(path)
    _refuse_inputs(path, inputs, option, may_hold=False)
    _refuse_inside_artifact(path, option, itself=False)
    atomic.check_writable_dir(path, option, replaced=True)
    _refuse_foreign(path, kind, option)
    return path


def check_root(root: str | Path, kind: RootKind, targets: Iterable[Target] = (), *, inputs: Inputs = (),
               option: str = "--out") -> Path:
    """Refuse a root (and any of the targets the command writes in it) that breaks the rule; returns the root."""
    root, inputs, targets = Path(root), list(inputs), list(targets)
    for target in targets:  # the most precise reason first: a target that would replace an input
        _refuse_inputs(target.path, inputs, option, may_hold=False)
    _refuse_inputs(root, inputs, option, may_hold=True)
    _refuse_inside_artifact(root, option, itself=True)
    atomic.check_writable_dir(root, option)
    if root.is_dir() and any(not p.name.startswith(".") for p in root.iterdir()) and not kind.holds_own(root):
        raise OutputError(f"{option} {root} holds files but is not {kind}: qtool writes into a new or empty folder, "
                          "or one that already holds its outputs")
    for target in targets:
        check_target(target.path, target.kind, inputs=inputs, option=option)
    return root


def relation(path: Path, other: Path) -> str | None:
    """How two paths overlap: 'is', 'is inside', 'holds', or None when neither contains the other."""
    a, b = path.resolve(), other.resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "holds"
    return None


def _refuse_inputs(path: Path, inputs: Inputs, option: str, *, may_hold: bool) -> None:
    """Rule 1: an output never is, holds (unless `may_hold`: a root beside its inputs) or lies inside an input."""
    for label, given in inputs:
        if given is None or not Path(given).exists():
            continue
        how = relation(path, Path(given))
        if how == "is":
            raise OutputError(f"{option} {path} is {label}: a command never writes over its own input")
        if how == "is inside":
            raise OutputError(f"{option} {path} is inside {label} {given}: outputs never go inside an input")
        if how == "holds" and not may_hold:
            raise OutputError(f"{option} {path} holds {label} {given}: writing there would replace it")


def _refuse_inside_artifact(path: Path, option: str, *, itself: bool) -> None:
    """Rule 1: files added to an artifact folder would change what its manifest describes."""
    resolved = path.resolve()
    for folder in ([resolved] if itself else []) + list(resolved.parents):
        if (folder / MANIFEST).is_file():
            where = "is an artifact" if folder == resolved else f"is inside the artifact {folder}"
            raise OutputError(f"{option} {path} {where}: outputs never go inside an artifact")


def _refuse_foreign(path: Path, kind: OutputKind, option: str) -> None:
    """Rule 2: an existing destination is replaced only when it is an output of the same kind."""
    if kind.is_file:
        if path.is_dir():
            raise OutputError(f"{option} {path} is a folder, not a file")
        if path.exists() and not kind.holds(path):
            raise OutputError(f"{option} {path} exists and is not {kind}; it would be replaced: choose another name")
        if kind is OutputKind.REPORT and not path.exists():
            strays = [n for n in REPORT_FILES[1:] if (path.parent / n).exists()]
            if strays:
                raise OutputError(f"{option} {path.parent} holds {', '.join(strays)} but no {REPORT_FILES[0]}; they "
                                  f"would be replaced: choose another folder")
        return
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not kind.holds(path):
        raise OutputError(f"{option} {path} is a non-empty folder that is not {kind}; it would be replaced: "
                          "choose a new or empty folder")


def _manifest(folder: Path) -> dict:
    """An artifact folder's manifest as written, unchecked ({} for anything else): enough to tell its kind."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _json_with(*keys: str) -> Callable[[Path], bool]:
    """A recogniser of a JSON file holding an object with these keys."""
    def holds(path: Path) -> bool:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)

    return holds


def _artifact_where(test: Callable[[dict], bool]) -> Callable[[Path], bool]:
    """A recogniser of an artifact folder whose manifest passes `test`."""
    return lambda folder: test(_manifest(folder))


_RECOGNISERS: dict[OutputKind, Callable[[Path], bool]] = {
    OutputKind.FP32_ARTIFACT: _artifact_where(lambda m: m.get("precision") == Precision.FP32 and not m.get("route")
                                              and m.get("kind", ArtifactKind.QTOOL) == ArtifactKind.QTOOL),
    OutputKind.INT8_ARTIFACT: _artifact_where(lambda m: m.get("precision") == Precision.INT8 and not m.get("route")),
    OutputKind.ROUTED_ARTIFACT: _artifact_where(lambda m: bool(m.get("route"))),
    OutputKind.STANDARD_ARTIFACT: _artifact_where(lambda m: m.get("kind") == ArtifactKind.STANDARD),
    OutputKind.MODEL: lambda folder: folder.is_dir() and any((folder / name).is_file() for name in MODEL_MARKERS),
    OutputKind.SEARCH_RESULT: _json_with("objective", "pareto", "evaluated"),
    OutputKind.LATENCY_MODEL: _json_with("layers", "coefficients", "graphs"),
    OutputKind.REPORT: _json_with("rows", "latency", "machine"),
}
