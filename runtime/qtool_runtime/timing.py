"""One timing loop for every side-by-side measurement (quantize's ladder, verify, fit-latency, the kit's menu).

Every round runs every piece of work in turn, after warm-up rounds, and the median of the timed rounds is
kept: a slow spell of a noisy machine then hits every graph alike, and ratios measured in one loop hold
where absolute milliseconds do not.
"""

from __future__ import annotations

import time
from typing import Callable, Hashable, Mapping

import numpy as np


def interleaved_ms(
    work: Mapping[Hashable, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    repeat: int = 1,
    untimed_first: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[Hashable, float]:
    """Median milliseconds of each piece of work (per call when `repeat` > 1), pieces interleaved round by round.

    `untimed_first`: each piece runs once untimed before its timed calls in every round (switching graphs evicts
    the previous graph's weights from the caches; a deployment serving one graph runs it warm)."""
    times: dict[Hashable, list[float]] = {key: [] for key in work}
    for r in range(warmup + rounds):
        for key, run in work.items():
            if untimed_first:
                run()
            t0 = time.perf_counter()
            for _ in range(repeat):
                run()
            if r >= warmup:
                times[key].append((time.perf_counter() - t0) * 1000.0 / repeat)
        if log is not None:
            log(f"  latency round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}")
    return {key: float(np.median(v)) for key, v in times.items()}
