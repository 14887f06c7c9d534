"""Graph rewrites as passes that state what they require and what they ensure (onnx-ir's PassBase shape).

A pass is a small object: `requires` and `ensures` are checks that return None when they hold or one line
saying what does not; `run_passes` checks each pass's requirement before it runs and its promise after, so a
rewrite that silently did nothing, or did something else, stops the export with the pass's name. Each pass also
counts the places it would rewrite (`sites`), so a run says how much each pass did (`PassRun.rewrites`) and which
passes found nothing to do (`PassRun.idle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import onnx
from qtool_runtime.errors import QtoolError

Check = Callable[[onnx.ModelProto], "str | None"]


class GraphPassError(QtoolError, RuntimeError):
    """A graph pass whose requirement or promise does not hold: a bug or an exporter we do not know."""


@dataclass(frozen=True)
class GraphPass:
    name: str
    doc: str
    requires: Check
    run: Callable[[onnx.ModelProto], None]
    ensures: Check
    # How many places the pass would rewrite in this model (a fusion: the matches of the finder its `ensures`
    # uses); read just before the pass runs.
    sites: Callable[[onnx.ModelProto], int]


@dataclass(frozen=True)
class PassRun:
    """What `run_passes` did: the rewritten model and, per pass name, the sites it found just before it ran."""

    model: onnx.ModelProto
    rewrites: dict[str, int]

    @property
    def idle(self) -> tuple[str, ...]:
        """The passes that rewrote nothing (no site in the graph they were given), in the order they ran. Such a pass
        may still have tidied the graph as it always does (declared onnxruntime's contrib domain, dropped initializers
        nothing reads)."""
        return tuple(name for name, count in self.rewrites.items() if count == 0)


def run_passes(model: onnx.ModelProto, passes: Sequence[GraphPass]) -> PassRun:
    """Run `passes` in order on `model` (in place), checking each one's requirement before and promise after, and
    counting each one's sites between the two. A pass name listed twice is refused (its count would be ambiguous)."""
    names = [p.name for p in passes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GraphPassError(f"graph pass(es) {', '.join(repeated)} listed more than once")
    rewrites: dict[str, int] = {}
    for graph_pass in passes:
        problem = graph_pass.requires(model)
        if problem is not None:
            raise GraphPassError(f"graph pass {graph_pass.name} requires what the graph lacks: {problem}")
        rewrites[graph_pass.name] = graph_pass.sites(model)
        graph_pass.run(model)
        problem = graph_pass.ensures(model)
        if problem is not None:
            raise GraphPassError(f"graph pass {graph_pass.name} did not ensure its promise: {problem}")
    return PassRun(model, rewrites)
