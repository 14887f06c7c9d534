"""Where a routed graph switches from the full to the reduced configuration: the widths timed and the rule on the
times, shared by `qtool route` (measured times) and the latency model (predicted times)."""

from __future__ import annotations

from dataclasses import dataclass


def timed_widths(seq_len: int) -> tuple[int, ...]:
    """Window lengths the crossover is timed at: a quarter of seq_len to seq_len in twelfths (96, 128, ..., 384)."""
    step = max(1, seq_len // 12)
    return tuple(sorted({*range(seq_len // 4 or 1, seq_len + 1, step), seq_len}))


@dataclass(frozen=True)
class Crossover:
    """Milliseconds per window of each graph at each width (batch 1, medians), and the routing threshold."""

    widths: tuple[int, ...]
    full_ms: tuple[float, ...]
    reduced_ms: tuple[float, ...]

    @property
    def full_up_to(self) -> int:
        """The longest measured width at which the full graph is still no slower than the reduced one, provided the
        reduced graph is faster at every longer width (else 0: route nothing to the full graph)."""
        best = 0
        for i, w in enumerate(self.widths):
            if all(f > r for f, r in zip(self.full_ms[i + 1:], self.reduced_ms[i + 1:])) and self.full_ms[i] <= self.reduced_ms[i]:
                best = w
        return best

    def to_dict(self) -> dict:
        return {"widths": list(self.widths), "full_ms": [round(x, 3) for x in self.full_ms],
                "reduced_ms": [round(x, 3) for x in self.reduced_ms], "full_up_to": self.full_up_to}
