"""Which activations a quantized graph gets wrong: per-tensor error against its FP32 twin on real windows.

What onnxruntime's `qdq_loss_debug` offers for QDQ graphs, for ours: both graphs are run with the input and
the output of every quantized weight MatMul exposed (the tensor names survive quantization: MatMulInteger-
ToFloat and QDQ keep them), on the same windows one at a time, and each tensor's relative error
||int8 - fp32|| / ||fp32|| and SQNR are reported, worst first. An input's error is what the layers before it
accumulated; an output's error minus its input's is what quantizing that MatMul added.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

TOP = 12  # tensors kept in the quantization record


@dataclass(frozen=True)
class TensorDrift:
    tensor: str
    node: str  # the weight MatMul it enters or leaves
    role: str  # q, k, v, attn_out, ffn_in, ffn_out, head
    side: str  # "input" (the activation quantized) or "output"
    rel_error: float  # ||int8 - fp32|| / ||fp32|| over all windows
    sqnr_db: float  # 20 log10(||fp32|| / ||int8 - fp32||)


def _watched(fp32_path: Path, roles: dict[str, list[str]]) -> list[tuple[str, str, str, str]]:
    """(tensor, node, role, side) for the activation input and the output of every weight MatMul by role."""
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    by_name = {n.name: n for n in graph.node}
    watched = []
    for role, names in roles.items():
        for name in names:
            node = by_name.get(name)
            if node is not None:
                watched += [(node.input[0], name, role, "input"), (node.output[0], name, role, "output")]
    return watched


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
        err = dict.fromkeys(shared, 0.0)
        ref = dict.fromkeys(shared, 0.0)
        for feed in feeds:
            a, b = (dict(zip(shared, s.run(shared, feed))) for s in sessions)
            for n in shared:
                if a[n].shape == b[n].shape:
                    err[n] += float(np.sum((a[n].astype(np.float64) - b[n]) ** 2))
                    ref[n] += float(np.sum(a[n].astype(np.float64) ** 2))
    rows = []
    for tensor, node, role, side in watched:
        if tensor in err and ref[tensor] > 0:
            rel = math.sqrt(err[tensor] / ref[tensor])
            rows.append(TensorDrift(tensor, node, role, side, rel, -20 * math.log10(rel) if rel > 0 else math.inf))
    return sorted(rows, key=lambda r: -r.rel_error)


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
