"""The Pareto front of (cost, F1) points: what verify plots and search recommends from."""

from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both cost (lower) and F1 (higher)."""
    front = []
    for i, (cost, f1) in enumerate(points):
        if not any((c <= cost and f >= f1) and (c < cost or f > f1) for c, f in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
