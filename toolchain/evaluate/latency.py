"""A per-layer latency model of qtool graphs, fitted on this machine, so search ranks configurations by
what a deployment pays on real lengths rather than by multiply-adds.

Measuring every candidate would mean exporting and quantizing each one. Instead a few graphs of the model
(the full one and some reduced ones) are timed at a handful of real lengths, one window at a time, and
the time of one window is fitted as a non-negative sum over the layers' token counts:

    ms = c0 + c1*drops + c2*L + c3*sum(n_in) + c4*sum(n_in^2) + c5*sum(n_out)

(L the window's length; per non-skipped layer n_in tokens in, n_out kept: the projections scale with
n_in, attention with n_in^2, the FFN with n_out; `drops` counts the layers that run a TopK/gather).
The standard recipe's graph, timed in the same rounds, is fitted as a + b*L + c*L^2, so a configuration's
cost is its predicted time over a set of windows relative to the standard recipe's on the same windows:
below 1/1.5 is the "1.5x faster than the standard recipe" line.
"""

from __future__ import annotations

from functools import partial
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..artifact.interface import GraphInterface
from ..core import atomic
from ..core.crossover import Crossover, timed_widths
from ..artifact import output
from ..core.errors import InputError
from ..core.length import LengthConfig
from ..core.machine import machine_info
from ..artifact.output import OutputKind
from qtool_runtime.timing import interleaved_ms
from qtool_runtime.contract import Engine, Precision
from ..artifact import manifest as manifest_mod
from ..artifact.manifest import Kind

if TYPE_CHECKING:
    from ..artifact.manifest import Manifest

FEATURES = ("constant", "drops", "tokens", "layer_tokens", "attention_pairs", "ffn_tokens")
BASELINE_FEATURES = ("constant", "tokens", "tokens_squared")
DEFAULT_LENGTHS = (64, 128, 192, 256, 320, 384)


def layer_tokens(config: LengthConfig, length: int) -> list[tuple[int, int]]:
    """(tokens in, tokens kept) of every layer that runs, for one window of `length` real tokens."""
    counts, n_in = [], length
    for i, keep in enumerate(config.keep):
        if keep is None:
            continue
        n_out = n_in if config.is_full else int(config.keep_count(i, length, n_in))
        counts.append((n_in, n_out))
        n_in = n_out
    return counts


def features(config: LengthConfig, length: int) -> np.ndarray:
    counts = layer_tokens(config, length)
    drops = 0 if config.is_full else len(counts)
    return np.array([1.0, drops, length, sum(a for a, _ in counts), sum(a * a for a, _ in counts),
                     sum(b for _, b in counts)], dtype=np.float64)


def baseline_features(length: int) -> np.ndarray:
    return np.array([1.0, length, float(length) ** 2])


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error (each point weighted by 1/time)."""
    from scipy.optimize import nnls

    coef, _ = nnls(x / y[:, None], np.ones_like(y))
    return coef


@dataclass
class LatencyModel:
    """Fitted coefficients (ms per unit of each feature) and the measurements they came from."""

    layers: int
    coefficients: dict[str, float]
    baseline: dict[str, float] | None  # the standard recipe's graph; None: costs are relative to our full graph
    machine: dict
    graphs: list[str]
    baseline_graph: str | None
    points: list[dict] = field(default_factory=list)  # every measured (graph, length, ms, predicted ms)
    fit_error: dict = field(default_factory=dict)  # relative errors on the points, and on graphs left out

    def predict_ms(self, config: LengthConfig, length: int) -> float:
        """Predicted ms of one window of `length` real tokens (a routed configuration's full one at or below its
        threshold)."""
        self._check(config)
        return float(features(config.for_window(length), length) @ np.array([self.coefficients[f] for f in FEATURES]))

    def routed(self, config: LengthConfig) -> LengthConfig:
        """`config` routed as `qtool route` routes it, on predicted instead of measured times: the full configuration
        up to the longest of route's widths at which it is predicted no slower (the same rule, `Crossover`); not
        routed when the reduced one is predicted faster everywhere. One that never pays runs full below seq_len."""
        if config.is_full:
            return config
        reduced = replace(config, full_up_to=0)
        full = LengthConfig.full(self.layers, config.seq_len, variant=config.variant)
        widths = timed_widths(config.seq_len)
        crossover = Crossover(widths, tuple(self.predict_ms(full, w) for w in widths),
                              tuple(self.predict_ms(reduced, w) for w in widths))
        return replace(reduced, full_up_to=min(crossover.full_up_to, config.seq_len - 1))

    def baseline_ms(self, length: int) -> float:
        if self.baseline is None:
            raise InputError("this latency model has no standard-recipe graph; fit it with one")
        return float(baseline_features(length) @ np.array([self.baseline[f] for f in BASELINE_FEATURES]))

    def cost(self, config: LengthConfig, lengths: Sequence[int] | np.ndarray) -> float:
        """Predicted time of `config` over these windows, relative to the standard recipe's graph on them
        (or, without one, to this model's full configuration)."""
        unique, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
        ours = sum(c * self.predict_ms(config, int(n)) for n, c in zip(unique, counts))
        if self.baseline is not None:
            ref = sum(c * self.baseline_ms(int(n)) for n, c in zip(unique, counts))
        else:
            full = LengthConfig.full(self.layers, config.seq_len, variant=config.variant)
            ref = sum(c * self.predict_ms(full, int(n)) for n, c in zip(unique, counts))
        return float(ours / ref)

    @property
    def reference(self) -> str:
        return "the standard recipe's INT8 graph" if self.baseline is not None else "our full graph"

    def _check(self, config: LengthConfig) -> None:
        if len(config.keep) != self.layers:
            raise InputError(f"the latency model was fitted on {self.layers}-layer graphs; "
                             f"{config.label} has {len(config.keep)} layers")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic.write_text(path, json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatencyModel":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            model = cls(**data)
            if set(model.coefficients) != set(FEATURES) or (
                    model.baseline is not None and set(model.baseline) != set(BASELINE_FEATURES)):
                raise ValueError("coefficients do not match the model's features")
        except FileNotFoundError:
            raise InputError(f"latency model {path} does not exist (make one with `qtool fit-latency`)") from None
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise InputError(f"{path} is not a latency model written by `qtool fit-latency`: {exc}") from None
        return model


def check_out(path: str | Path, folders: Sequence[str | Path] = ()) -> Path:
    """Refuse, before any timing (`toolchain.artifact.output`), a destination that is one of the artifact `folders` timed, lies
    inside an artifact, or is a file that is not a latency model (re-fitting replaces a latency model); returns it."""
    return output.check_target(path, OutputKind.LATENCY_MODEL, inputs=[("GRAPHS", f) for f in folders])


def _time_points(sessions: dict[str, object], lengths: Sequence[int], *, rounds: int, warmup: int,
                 log: Callable[[str], None]) -> dict[str, dict[int, float]]:
    """Median ms of one window at each length, every session interleaved round by round.

    Each (graph, length) runs once untimed before its timed runs: switching graphs evicts the previous
    graph's weights from the caches, and a deployment serving one graph runs it warm."""
    from ..graph.runtime import synthetic_feed

    work = {(name, n): partial(s.run, None, synthetic_feed(GraphInterface.of_session(s), 1, n, seed=n))
            for name, s in sessions.items() for n in lengths}
    medians = interleaved_ms(work, rounds=rounds, warmup=warmup, repeat=3, untimed_first=True, log=log)
    return {name: {n: medians[(name, n)] for n in lengths} for name in sessions}


def fit_latency_model(
    folders: Sequence[str | Path],
    *,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    rounds: int = 5,
    warmup: int = 1,
    precision: str = Precision.INT8,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> LatencyModel:
    """Time qtool graphs of one model (and, if given, the standard recipe's INT8 graph) and fit the model.

    Uses the qtool graphs of `precision` among `folders` (others are skipped, so a bench folder can be given
    whole). Needs at least two configurations, one of them reduced, all of one depth: the reduced graphs are
    what tell the per-layer terms apart. Steps: choose graphs -> time -> fit -> fit the baseline.
    """
    from ..graph.runtime import onnx_session

    ours, baseline = _graphs_to_fit(folders, precision)
    lengths = _lengths_to_time(ours, lengths)
    sessions = {name: onnx_session(folder / m.graph, threads) for name, (folder, m) in ours.items()}
    if baseline is not None:
        sessions[baseline[0]] = onnx_session(baseline[1] / baseline[2].graph, threads)
    log(f"timing {len(sessions)} graphs at lengths {lengths}, batch 1, {rounds} rounds")
    measured = _time_points(sessions, lengths, rounds=rounds, warmup=warmup, log=log)

    rows = [(name, m.length_config, n, measured[name][n]) for name, (_, m) in ours.items() for n in lengths]
    x = np.stack([features(c, n) for _, c, n, _ in rows])
    y = np.array([ms for *_, ms in rows])
    coef = _fit(x, y)
    predicted = x @ coef
    held_out = _held_out_errors(rows, x, y, [name for name, (_, m) in ours.items() if m.is_reduced]) if len(ours) >= 3 else {}
    points = [{"graph": name, "config": config.label, "length": n, "ms": round(ms, 4), "predicted_ms": round(float(p), 4)}
              for (name, config, n, ms), p in zip(rows, predicted)]
    base_coef = None
    if baseline is not None:
        base_coef, base_points = _fit_baseline(baseline[0], lengths, measured[baseline[0]])
        points += base_points
    rel = np.abs(predicted - y) / y
    fit_error = {"max_relative": round(float(rel.max()), 4), "median_relative": round(float(np.median(rel)), 4),
                 "held_out_max_relative": held_out}
    model = LatencyModel(layers=len(next(iter(ours.values()))[1].length_config.keep),
                         coefficients=dict(zip(FEATURES, map(float, coef))), baseline=base_coef,
                         machine=machine_info(threads), graphs=sorted(ours), baseline_graph=baseline[0] if baseline else None,
                         points=points, fit_error=fit_error)
    log(f"fitted on {len(rows)} points: median error {fit_error['median_relative']:.1%}, max {fit_error['max_relative']:.1%}"
        + (f"; graphs left out: {', '.join(f'{k} {v:.1%}' for k, v in held_out.items())}" if held_out else ""))
    return model


def _graphs_to_fit(folders: Sequence[str | Path], precision: str
                   ) -> tuple[dict[str, tuple[Path, Manifest]], tuple[str, Path, Manifest] | None]:
    """qtool's graphs of `precision` (one model, one depth, a reduced one among them) and the standard recipe's INT8."""

    ours: dict[str, tuple[Path, Manifest]] = {}
    baseline: tuple[str, Path, Manifest] | None = None
    for folder in map(Path, folders):
        m = manifest_mod.load(folder)
        if m.kind == Kind.STANDARD:
            if m.precision != Precision.INT8 or m.engine != Engine.ONNXRUNTIME:
                # the standard recipe's FP32 graphs are not what a team ships; the model times onnxruntime graphs, so
                # the OpenVINO peer (c) is not its reference (verify measures every graph against it)
                continue
            if baseline is not None:
                raise InputError(f"two standard-recipe INT8 graphs given ({baseline[0]}, {folder.name}); give one")
            baseline = (folder.name, folder, m)
        elif m.precision == precision:
            ours[folder.name] = (folder, m)
    if not ours:
        raise InputError(f"no qtool {precision} graph among the folders given")
    depths = {len(m.length_config.keep) for _, m in ours.values()}
    models = {m.source_model for _, m in ours.values()}
    if len(depths) > 1 or len(models) > 1:
        raise InputError(f"fit one model at a time: the graphs come from {sorted(models)} (depths {sorted(depths)})")
    if len({m.length_config.label for _, m in ours.values()}) < 2 or all(not m.is_reduced for _, m in ours.values()):
        raise InputError("need at least two qtool configurations, one of them reduced, to tell the per-layer terms apart")
    return ours, baseline


def _lengths_to_time(ours: dict[str, tuple[Path, Manifest]], lengths: Sequence[int]) -> list[int]:
    longest = min(m.max_positions for _, m in ours.values())
    lengths = sorted(set(int(n) for n in lengths))
    if not lengths or lengths[0] < 2 or lengths[-1] > longest:
        raise InputError(f"lengths must lie in [2, {longest}], got {lengths}")
    return lengths


def _held_out_errors(rows: list, x: np.ndarray, y: np.ndarray, reduced: list[str]) -> dict[str, float]:
    """How well the model predicts a configuration it never saw: refit without each reduced graph in turn."""
    held_out = {}
    for name in reduced:
        keep = np.array([r[0] != name for r in rows])
        c = _fit(x[keep], y[keep])
        err = np.abs(x[~keep] @ c - y[~keep]) / y[~keep]
        held_out[name] = round(float(err.max()), 4)
    return held_out


def _fit_baseline(name: str, lengths: list[int], measured: dict[int, float]) -> tuple[dict[str, float], list[dict]]:
    """The standard recipe's ms as a function of length, so costs read as speed against it."""
    xb = np.stack([baseline_features(n) for n in lengths])
    yb = np.array([measured[n] for n in lengths])
    cb = _fit(xb, yb)
    points = [{"graph": name, "config": "standard", "length": n, "ms": round(float(ms), 4),
               "predicted_ms": round(float(p), 4)} for n, ms, p in zip(lengths, yb, xb @ cb)]
    return dict(zip(BASELINE_FEATURES, map(float, cb))), points
