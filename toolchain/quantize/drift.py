"""Which activations a quantized graph gets wrong: per-tensor error against its FP32 twin on real windows.

What onnxruntime's `qdq_loss_debug` offers for QDQ graphs, for ours: both graphs are run with the input and
the output of every quantized weight MatMul exposed (the tensor names survive quantization: MatMulInteger-
ToFloat and QDQ keep them), on the same windows one at a time, and each tensor's relative error
||int8 - fp32|| / ||fp32|| and SQNR are reported, worst first. An input's error is what the layers before it
accumulated; an output's error minus its input's is what quantizing that MatMul added.

Drop-and-Restore orders a layer's rows by significance, so the two graphs' rows need not be in the same order:
rows are matched by the token position they hold (the graph's `kept_i` outputs), and tokens only one graph
kept are left out (the kept-token agreement reports those).
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ..graph.passes import consumers, only_user, producers

TOP = 12  # tensors kept in the quantization record
# roles that run on the rows a layer received (the previous layer kept): attention, and the QA head an `answer` graph
# runs inside each dropping layer; FFN roles run on the rows the layer kept
RECEIVED_ROWS_ROLES = ("q", "k", "v", "attn_out", "head")
LAYER = re.compile(r"layer\.(\d+)\.")


@dataclass(frozen=True)
class TensorDrift:
    tensor: str
    node: str  # the weight MatMul it enters or leaves
    role: str  # q, k, v, attn_out, ffn_in, ffn_out, head
    side: str  # "input" (the activation quantized) or "output"
    rel_error: float  # ||int8 - fp32|| / ||fp32|| over all windows
    sqnr_db: float  # 20 log10(||fp32|| / ||int8 - fp32||)


def _watched(fp32_path: Path, roles: dict[str, list[str]]) -> list[tuple[str, str, str, str, str]]:
    """(tensor, node, role, side, placed) for the activation input and the output of every weight MatMul by role;
    `placed` names the node whose `layer.N.` says which layer's rows the tensor holds (_rows_from)."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    by_name = {n.name: n for n in graph.node}
    writers = producers(graph)
    users = consumers(graph)
    biases = {i.name for i in graph.initializer if len(i.dims) == 1}
    watched = []
    for role, names in roles.items():
        for name in names:
            node = by_name.get(name)
            if node is not None:
                # the QA head's MatMuls carry no layer in their name: an `answer` graph's ranking heads read a
                # layer's attention output, named by the LayerNorm that makes it; the final head reads restored rows
                named = writers.get(node.input[0]) if role == "head" else node
                placed = named.name if named is not None else ""
                watched += [(node.input[0], name, role, "input", placed),
                            (_dense_output(node, users, biases), name, role, "output", placed)]
    return watched


def _dense_output(matmul, users: dict[str, list], biases: set[str]) -> str:
    """The weight MatMul's output, after its bias Add when it has one: the INT8 graph computes both in one node
    (passes.FUSE_MATMUL_BIAS), so only the biased tensor exists in both graphs."""
    add = only_user(users, matmul.output[0], "Add")
    return add.output[0] if add is not None and any(i in biases for i in add.input) else matmul.output[0]


def _with_outputs(path: Path, tensors: Sequence[str], scratch: Path) -> Path:
    """A copy of the graph that also returns `tensors` (those it has)."""
    import onnx

    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output}
    have = {o.name for o in model.graph.output}
    for name in tensors:
        if name in produced and name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    out = scratch / f"{path.stem}-{len(list(scratch.iterdir()))}.onnx"
    onnx.save(model, str(out))
    return out


def tensor_drift(fp32_path: str | Path, int8_path: str | Path, roles: dict[str, list[str]],
                 feeds: Sequence[dict[str, np.ndarray]]) -> list[TensorDrift]:
    """Relative error of every watched tensor the INT8 graph still has, over `feeds`, worst first."""
    import onnxruntime as ort

    watched = _watched(Path(fp32_path), roles)
    names = list(dict.fromkeys(t for t, *_ in watched))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor addressable
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="qtool-drift-") as scratch:
        sessions = [ort.InferenceSession(str(_with_outputs(Path(p), names, Path(scratch))), options,
                                         providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
        shared = [n for n in names if all(n in {o.name for o in s.get_outputs()} for s in sessions)]
        kept = sorted((o.name for o in sessions[0].get_outputs() if o.name.startswith("kept_")), key=lambda k: int(k[5:]))
        err: dict[tuple[str, str], float] = {}
        ref: dict[tuple[str, str], float] = {}
        for feed in feeds:
            a, b = (dict(zip(shared + kept, s.run(shared + kept, feed))) for s in sessions)
            for tensor, node, role, _, placed in watched:
                if tensor in a:
                    x, y = _aligned(a, b, tensor, _rows_from(placed, role, kept))
                    err[(tensor, node)] = err.get((tensor, node), 0.0) + float(np.sum((x - y) ** 2))
                    ref[(tensor, node)] = ref.get((tensor, node), 0.0) + float(np.sum(x ** 2))
    rows = []
    for tensor, node, role, side, _ in watched:
        if ref.get((tensor, node), 0) > 0:
            rel = math.sqrt(err[(tensor, node)] / ref[(tensor, node)])
            rows.append(TensorDrift(tensor, node, role, side, rel, -20 * math.log10(rel) if rel > 0 else math.inf))
    return sorted(rows, key=lambda r: -r.rel_error)


def _rows_from(placed: str, role: str, kept: list[str]) -> str | None:
    """The `kept_i` output naming the token position of each row of the tensors `placed` names (None: rows in order)."""
    match = LAYER.search(placed)
    if not kept or match is None:
        return None
    layer = int(match.group(1)) - (1 if role in RECEIVED_ROWS_ROLES else 0)
    return kept[layer] if layer >= 0 else None


def _aligned(a: dict, b: dict, tensor: str, rows_from: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The tensor's rows both graphs hold, in the same token order (batch of one window)."""
    x, y = a[tensor].astype(np.float64), b[tensor].astype(np.float64)
    if rows_from is None or x.ndim != 3:
        return (x, y) if x.shape == y.shape else (x[:0], y[:0])
    pa, pb = a[rows_from][0], b[rows_from][0]
    if len(pa) != x.shape[1] or len(pb) != y.shape[1]:
        return (x, y) if x.shape == y.shape else (x[:0], y[:0])
    where_b = {int(p): r for r, p in enumerate(pb)}
    pairs = [(r, where_b[int(p)]) for r, p in enumerate(pa) if int(p) in where_b]
    ra, rb = (np.array([p[i] for p in pairs], dtype=np.int64) for i in (0, 1))
    return x[0, ra], y[0, rb]


def drift_record(rows: Sequence[TensorDrift], windows: int, top: int = TOP) -> dict:
    """What the quantization record keeps: the worst tensors and the mean error each role's MatMuls add."""
    added: dict[str, list[float]] = {}
    by_node = {(r.node, r.side): r.rel_error for r in rows}
    for (node, side), rel in by_node.items():
        if side == "output" and (node, "input") in by_node:
            role = next(r.role for r in rows if r.node == node)
            added.setdefault(role, []).append(rel - by_node[(node, "input")])
    return {
        "windows": windows,
        "metric": "relative error ||int8 - fp32|| / ||fp32|| per tensor, windows one at a time",
        "worst": [asdict(r) for r in rows[:top]],
        "added_by_role": {role: float(np.mean(v)) for role, v in sorted(added.items())},
    }


def format_drift(record: dict, top: int = 5) -> list[str]:
    """Lines `quantize` prints: the tensors that drift most."""
    lines = [f"  largest activation drift vs FP32 ({record['windows']} windows):"]
    for r in record["worst"][:top]:
        lines.append(f"    {r['rel_error']:.4f} ({r['sqnr_db']:.1f} dB)  {r['side']} of {r['role']}: {r['node']}")
    return lines
