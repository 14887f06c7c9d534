"""The prediction runtime every stage shares: onnxruntime and PyTorch span logits, SQuAD scoring, timing.

Export validates with it, quantize scores recipes with it, search scores candidates with it, verify and
bench report with it: one code path, so what is measured is what ships.

Three input protocols, because a graph with dynamic axes can be fed in several ways, and dynamic INT8
graphs (activation scales computed per batch) answer differently depending on their batch-mates:
- `padded`: batches of 32 windows, each padded to the sequence length the configuration was stated for
  (the papers' protocol; Drop-and-Restore drops padding first);
- `unpadded`: every window alone at its real length (batch 1: what a deployment answering one question sends);
- `bucketed`: windows sorted by length in batches of 32, each padded to its longest (batched serving).
A graph whose every answer is independent of padding and batch-mates (FP32 or statically quantized, and
either the full configuration or the `cap` rule) gives the same logits under all three; the runtime then
runs length-sorted batches cut to their longest window, which is exact and several times faster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from qtool_runtime.contract import Engine

from ..artifact import manifest as manifests
from ..artifact.interface import GraphError, GraphInterface, is_invariant
from ..data import squad
from ..data.overlap import f1_by_third
from ..core.length import LengthConfig
from ..core.windows import PROTOCOLS, Protocol  # noqa: F401 (runtime.Protocol)
from qtool_runtime.engines import open_session


@dataclass
class Predictions:
    start_logits: np.ndarray
    end_logits: np.ndarray
    kept: list[np.ndarray] | None = None  # per layer [n, k_i] kept positions, when the runtime reports them
    # PyTorch only (predict_torch(scores=True)): per dropping layer [n, seq_len] float64 ranking scores by original
    # position (NaN: the token had been dropped before that layer)
    scores: list[np.ndarray] | None = None


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=not enabled, dynamic_ncols=True, leave=False)


def batches(
    features: squad.Features, batch_size: int, *, protocol: Protocol, invariant: bool, full_up_to: int = 0
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield (rows, inputs) under `protocol` (see the module docstring).

    `invariant`: the caller knows each window's answer depends neither on padding nor on its batch-mates,
    so every protocol may run as length-sorted batches cut to their longest window (exact, fastest).
    `full_up_to`: a routed graph's threshold; batches never mix windows on both sides of it.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is unknown; choose one of {PROTOCOLS}")
    protocol = Protocol.BUCKETED if invariant else Protocol(protocol)  # exact for an invariant graph, and fastest
    lengths = features.attention_mask.sum(1)
    for rows in protocol.groups(lengths, batch_size, threshold=full_up_to):
        inputs = features.model_inputs(rows)
        if protocol != Protocol.PADDED:
            width = int(lengths[rows].max())
            inputs = {k: v[:, :width] for k, v in inputs.items()}
        yield rows, inputs


def _assemble(n: int, width: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Put batch logits back in feature order; positions a shorter batch did not compute get -1e4."""
    start = np.full((n, width), -1e4, dtype=np.float32)
    end = np.full((n, width), -1e4, dtype=np.float32)
    for rows, s, e in parts:
        start[rows, : s.shape[1]] = s
        end[rows, : e.shape[1]] = e
    return start, end


def _kept_layers(kept: list[list[np.ndarray]], parts: list, n: int) -> list[np.ndarray] | None:
    """Per-layer kept positions in feature order (padded with -1 where a shorter window kept fewer)."""
    if not kept or not kept[0]:
        return None
    layers = []
    for i in range(len(kept[0])):
        width = max(k[i].shape[1] for k in kept)
        out = np.full((n, width), -1, dtype=np.int64)
        for (rows, _, _), k in zip(parts, kept):
            out[rows, : k[i].shape[1]] = k[i]
        layers.append(out)
    return layers


def predict_torch(
    model,
    features: squad.Features,
    config: LengthConfig | None = None,
    *,
    batch_size: int = 32,
    protocol: Protocol = Protocol.PADDED,
    show_progress: bool = False,
    scores: bool = False,
) -> Predictions:
    """Span logits (and kept positions) from the PyTorch Drop-and-Restore model (FP32, eval mode); `scores`: also
    each dropping layer's ranking scores (what `near_tie_flips` reads)."""
    import torch

    from ..model.drop_and_restore import drop_and_restore

    model.eval()
    full = config is None or config.is_full
    n, width = len(features), features.input_ids.shape[1]
    parts, kept, ranked = [], [], []
    with torch.inference_mode(), _progress(n, "torch", show_progress) as bar:
        for rows, inputs in batches(features, batch_size, protocol=protocol, invariant=is_invariant(config),
                                    full_up_to=config.full_up_to if config is not None else 0):
            batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
            collected: list = []
            s, e, k = drop_and_restore(model, **batch, config=config, return_kept=True,
                                       scores_out=collected if scores else None)
            parts.append((rows, s.float().numpy(), e.float().numpy()))
            kept.append([] if full else [x.numpy() for x in k])
            ranked.append([_by_position(p.numpy(), r.numpy(), width) for p, r in collected])
            bar.update(len(rows))
    start, end = _assemble(n, width, parts)
    layer_scores = None
    if scores and ranked and ranked[0] and all(len(r) == len(ranked[0]) for r in ranked):
        order = np.concatenate([rows for rows, _, _ in parts])
        layer_scores = [_in_feature_order(np.concatenate([r[i] for r in ranked]), order) for i in range(len(ranked[0]))]
    return Predictions(start, end, _kept_layers(kept, parts, n), layer_scores)


def _by_position(positions: np.ndarray, score: np.ndarray, width: int) -> np.ndarray:
    """[b, width] scores indexed by original position, NaN where a token was not ranked."""
    out = np.full((positions.shape[0], width), np.nan)
    np.put_along_axis(out, positions, score, axis=1)
    return out


def _in_feature_order(rows_in_run_order: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(rows_in_run_order)
    out[order] = rows_in_run_order
    return out


@dataclass(frozen=True)
class NearTie:
    """A window whose kept tokens differ from PyTorch's first at `layer`, where PyTorch ranked the swapped tokens
    `gap` apart (the largest score PyTorch kept but the graph dropped, less the smallest the graph kept instead)."""

    window: int
    layer: int
    gap: float
    swapped: int  # tokens kept by one run only, at that layer


def near_tie_flips(want: Predictions, got: Predictions, attention_mask: np.ndarray) -> list[NearTie]:
    """Every window whose kept real tokens differ between PyTorch (`want`, with scores) and a graph (`got`), judged
    at the first layer they differ: later layers see different tokens, so they differ as a consequence."""
    if want.kept is None or got.kept is None or want.scores is None:
        return []
    flips = []
    for row in range(attention_mask.shape[0]):
        real = attention_mask[row].astype(bool)
        for layer, (ka, kb, sc) in enumerate(zip(want.kept, got.kept, want.scores)):
            a = {int(p) for p in ka[row] if p >= 0 and real[p]}
            b = {int(p) for p in kb[row] if p >= 0 and real[p]}
            if a != b:
                lost, gained = sorted(a - b), sorted(b - a)
                top = max(sc[row, lost]) if lost else -np.inf
                bottom = min(sc[row, gained]) if gained else np.inf
                gap = float(top - bottom) if lost and gained else float("inf")  # unequal counts: not a tie
                flips.append(NearTie(row, layer, gap if np.isfinite(gap) else float("inf"), len(lost) + len(gained)))
                break
    return flips


def onnx_session(path: str | Path, threads: int | None = None, engine: Engine = Engine.ONNXRUNTIME, *,
                 exact: bool = True):
    """A CPU session of the graph at `path` on `engine` (qtool_runtime.engines: onnxruntime with full graph
    optimisation, or OpenVINO computing in FP32); a corrupt graph raises GraphError."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"graph not found: {path}")
    return open_session(path, engine, threads, exact=exact, error=GraphError)


def artifact_session(folder: str | Path, threads: int | None = None, *, exact: bool | None = None):
    """A session of the artifact in `folder` on the runtime its manifest names, computing as a user runs it: in FP32
    where the graph says FP32 unless its manifest's float_precision (or, for a peer, its kind) says the runtime's
    default. `exact` overrides the manifest (a study of what the runtime's default precision costs)."""
    folder = Path(folder)
    manifest = manifests.load(folder)
    return onnx_session(folder / manifest.graph, threads, Engine(manifest.engine),
                        exact=manifest.runs_exactly if exact is None else exact)


def predict_onnx(
    session,
    features: squad.Features,
    *,
    batch_size: int = 32,
    protocol: Protocol = Protocol.PADDED,
    invariant: bool = False,
    show_progress: bool = False,
    keep: np.ndarray | Sequence[int] | None = None,
    full_up_to: int = 0,
) -> Predictions:
    """Span logits (and kept positions, if the graph outputs them) from an onnxruntime session.

    `invariant` and `full_up_to` (see `batches`) come from the manifest: only the caller knows how a graph was
    quantized and whether it routes. `keep`: the counts a run-time configuration graph runs (None: full).
    """
    interface = GraphInterface.of_session(session)
    names = [o.name for o in session.get_outputs()]
    keep_feed = interface.keep_feed(keep, features.input_ids.shape[1])
    parts, kept = [], []
    with _progress(len(features), "onnx", show_progress) as bar:
        for rows, inputs in batches(features, batch_size, protocol=protocol, invariant=invariant, full_up_to=full_up_to):
            feed = {k: v for k, v in inputs.items() if k in interface.inputs} | keep_feed
            out = dict(zip(names, session.run(None, feed)))
            parts.append((rows, out["start_logits"], out["end_logits"]))
            kept.append([out[n] for n in interface.kept_outputs])
            bar.update(len(rows))
    start, end = _assemble(len(features), features.input_ids.shape[1], parts)
    return Predictions(start, end, _kept_layers(kept, parts, len(features)))


def question_f1(session, examples: Sequence[squad.SquadExample], features: squad.Features) -> np.ndarray:
    """Per-question SQuAD F1 (0-1) of a graph whose answers do not depend on batch-mates, every window alone at its
    real length: what paired comparisons of graphs on the same questions need."""
    preds = predict_onnx(session, features, batch_size=1, protocol=Protocol.UNPADDED, invariant=True)
    return squad.question_scores(squad.postprocess(examples, features, preds.start_logits, preds.end_logits),
                                 examples)[1]


def score(examples: Sequence[squad.SquadExample], features: squad.Features, preds: Predictions,
          thirds: np.ndarray | None = None) -> dict:
    """Official SQuAD v1.1 EM/F1 of span logits; with `thirds` (overlap.overlap_thirds), F1 on each overlap third."""
    answers = squad.postprocess(examples, features, preds.start_logits, preds.end_logits)
    em, f1 = squad.question_scores(answers, examples)
    result = squad.scores_of(em, f1)
    if thirds is not None:
        result["f1_by_overlap"] = f1_by_third(f1, thirds)
    return result


def kept_agreement(a: Predictions, b: Predictions, attention_mask: np.ndarray) -> list[float]:
    """Per layer, the share of real (non-padding) kept tokens both runs keep: |A ∩ B| / |A|, over all rows."""
    if a.kept is None or b.kept is None:
        return []
    shares = []
    for ka, kb in zip(a.kept, b.kept):
        same = total = 0
        for row in range(ka.shape[0]):
            real = attention_mask[row]
            sa = {int(p) for p in ka[row] if p >= 0 and real[p]}
            sb = {int(p) for p in kb[row] if p >= 0 and real[p]}
            same += len(sa & sb)
            total += len(sa)
        shares.append(same / total if total else 1.0)
    return shares


def synthetic_feed(interface: GraphInterface, batch_size: int, seq_len: int, seed: int = 0,
                   keep: np.ndarray | Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """A batch of `seq_len` real (unpadded) random tokens: the papers' latency protocol (`keep`: see predict_onnx)."""
    rng = np.random.default_rng(seed)
    feed = {
        "input_ids": rng.integers(1000, 20000, size=(batch_size, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
        "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64),
    }
    return {k: v for k, v in feed.items() if k in interface.inputs} | interface.keep_feed(keep, seq_len)
