"""Choosing a configuration of a run-time configuration graph: by name, by latency budget, or under load.

A run-time configuration graph (manifest input `keep_counts`) runs any configuration on its menu. The kit
times each entry on the machine that serves (`measure`: one window at a time, at a few lengths, entries
interleaved), predicts the time of queued work as the sum of its windows' times (conservative: batched runs
cost less per window), and `choose` takes the most accurate entry whose prediction meets a budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np

from .contract import MenuEntry
from .timing import interleaved_ms


@dataclass(frozen=True)
class MenuTimes:
    """Milliseconds per window at batch 1, per menu entry (by label), at each of `lengths` tokens."""

    lengths: tuple[int, ...]
    ms: dict[str, tuple[float, ...]]

    def window_ms(self, label: str, length: int) -> float:
        """Interpolated between measured lengths; scaled linearly below the shortest."""
        lengths, ms = np.array(self.lengths, float), np.array(self.ms[label], float)
        if length < lengths[0]:
            return float(ms[0] * length / lengths[0])
        return float(np.interp(length, lengths, ms))

    def predict(self, label: str, window_lengths: Sequence[int]) -> float:
        return sum(self.window_ms(label, n) for n in window_lengths)

    def to_dict(self) -> dict:
        return {"lengths": list(self.lengths), "ms_per_window": {k: [round(v, 3) for v in vs] for k, vs in self.ms.items()},
                "statistic": "median, batch 1, entries interleaved"}


def by_accuracy(menu: Sequence[MenuEntry]) -> list[MenuEntry]:
    """Most accurate first: the full entry (the menu's first), then by mean recorded F1 when every entry has one,
    else by MACs. A reduced configuration approximates the full model, so F1 that ranks one above it is the noise of
    a small scoring slice; an unlimited budget always runs the full model."""
    full, reduced = menu[:1], list(menu[1:])
    if all(e.mean_f1 is not None for e in reduced):
        return full + sorted(reduced, key=lambda e: -e.mean_f1)
    return full + sorted(reduced, key=lambda e: -(e.macs_ratio if e.macs_ratio is not None else 1.0))


def choose(menu: Sequence[MenuEntry], times: MenuTimes, window_lengths: Sequence[int], budget_ms: float, *,
           label: Callable[[MenuEntry], str] = lambda e: e.label) -> MenuEntry:
    """The most accurate entry whose predicted time for `window_lengths` meets `budget_ms`; else the fastest.
    `label` names an entry as `times` does."""
    for entry in by_accuracy(menu):
        if times.predict(label(entry), window_lengths) <= budget_ms:
            return entry
    return min(menu, key=lambda e: times.predict(label(e), window_lengths))


def measure(run_window: Callable[[MenuEntry, int], None], menu: Sequence[MenuEntry], lengths: Sequence[int], *,
            rounds: int = 5, warmup: int = 1, label: Callable[[MenuEntry], str] = lambda e: e.label) -> MenuTimes:
    """Median ms of `run_window(entry, length)` per entry and length, entries interleaved round by round; the
    table is keyed by `label` (the kit's: 'full' or the counts)."""
    work = {(label(e), n): partial(run_window, e, n) for n in lengths for e in menu}
    medians = interleaved_ms(work, rounds=rounds, warmup=warmup)
    return MenuTimes(tuple(lengths), {label(e): tuple(medians[(label(e), n)] for n in lengths) for e in menu})
