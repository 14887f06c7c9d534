"""What a qtool graph takes and returns (recorded in its manifest), and whether its answers depend on padding or
batch-mates. Below the runtime that feeds graphs, so the manifest reads it without the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from qtool_runtime.contract import KEEP_INPUT, MODEL_INPUTS, SPAN_OUTPUTS
from qtool_runtime.errors import QtoolError

from ..core.length import LengthConfig

KEPT_PREFIX = "kept_"


class GraphError(QtoolError, ValueError):
    """A graph that cannot be loaded or does not have the interface its manifest promises."""


@dataclass(frozen=True)
class GraphInterface:
    """What a qtool graph takes and returns; reduced graphs also return the positions each layer kept."""

    inputs: tuple[str, ...] = MODEL_INPUTS
    kept_outputs: tuple[str, ...] = ()

    @property
    def outputs(self) -> tuple[str, ...]:
        return SPAN_OUTPUTS + self.kept_outputs

    @property
    def is_reduced(self) -> bool:
        """True when the graph drops tokens (and reports which it kept)."""
        return bool(self.kept_outputs)

    @property
    def takes_keep(self) -> bool:
        """True for a run-time configuration graph: its keep counts are the input KEEP_INPUT."""
        return KEEP_INPUT in self.inputs

    def keep_feed(self, keep: np.ndarray | None, seq_len: int) -> dict[str, np.ndarray]:
        """The keep-count input to add to a feed ({} for a graph of one configuration; full when `keep` is None)."""
        if not self.takes_keep:
            return {}
        return {KEEP_INPUT: np.full(len(self.kept_outputs), seq_len, np.int64) if keep is None else np.asarray(keep, np.int64)}

    @classmethod
    def for_config(cls, config: LengthConfig, inputs: Sequence[str] = MODEL_INPUTS) -> "GraphInterface":
        kept = () if config.is_full else tuple(f"{KEPT_PREFIX}{i}" for i in range(len(config.keep)))
        return cls(tuple(inputs), kept)

    @classmethod
    def for_runtime(cls, layout: LengthConfig, inputs: Sequence[str] = MODEL_INPUTS) -> "GraphInterface":
        """The run-time configuration graph: the model inputs, then KEEP_INPUT; kept positions for every layer."""
        return cls((*inputs, KEEP_INPUT), tuple(f"{KEPT_PREFIX}{i}" for i in range(len(layout.keep))))

    @classmethod
    def of_session(cls, session) -> "GraphInterface":
        """Read the interface off a loaded graph; refuse graphs without span outputs."""
        outputs = [o.name for o in session.get_outputs()]
        missing = [o for o in SPAN_OUTPUTS if o not in outputs]
        if missing:
            raise GraphError(f"graph has no {missing} output(s); outputs are {outputs}")
        return cls(tuple(i.name for i in session.get_inputs()), tuple(o for o in outputs if o.startswith(KEPT_PREFIX)))

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: dict) -> "GraphInterface":
        outputs = list(data["outputs"])
        if outputs[:2] != list(SPAN_OUTPUTS):
            raise GraphError(f"graph outputs must start with {list(SPAN_OUTPUTS)}, got {outputs}")
        return cls(tuple(data["inputs"]), tuple(outputs[2:]))


def is_invariant(config: LengthConfig | None, *, static: bool = True) -> bool:
    """True when a graph's answers depend neither on padding nor on batch-mates: no dynamic activation
    scales (`static`), and no drop ops or drop counts that see padding (qtool's significance)."""
    if config is None or config.is_full:
        return static
    # `lat` significance (padding queries included) sees padding
    return static and not config.variant.sees_padding
