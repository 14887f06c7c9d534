"""One graph for paragraphs and documents: the full model on short windows, a reduced configuration on long ones.

Why: ranking and gathering tokens costs about what dropping saves on a short window, so a reduced graph runs
slower than the plain model on SQuAD's paragraphs (0.89x the standard recipe one window at a time, results/routed-graph) and
faster on full document windows (1.30x). A routed graph holds both graphs of one model under an `If`:

1. **trim**: columns that are padding in every row are cut off (exact: padding is masked out of attention and
   a `cap` graph ranks it last), so a window padded to seq_len costs what it costs unpadded;
2. **route**: if the longest real window of the batch has at most `full_up_to` tokens, the full graph runs; else
   the reduced one (its kept positions are reported as every position on the full branch);
3. **restore the width**: span logits are padded back to the input's width (padding positions get PAD_LOGIT).

The route depends on the batch's longest window, so batchers never put windows on both sides of `full_up_to` in
one batch (`qtool_runtime.contract.length_runs`); then every window's answer is its own branch's answer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from qtool_runtime.contract import SPAN_OUTPUTS

from ..artifact import artifact, output
from ..artifact import manifest as manifests
from ..core.crossover import Crossover, timed_widths
from ..core.errors import InputError
from ..artifact.output import OutputKind
from .passes import defined_names, subgraphs
from qtool_runtime.timing import interleaved_ms
from .runtime import onnx_session

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

PAD_LOGIT = -10000.0  # span logits at padding positions of the input (never an answer)
MIN_OPSET = 18  # ReduceMax with its axes as an input


class RouteError(InputError):
    """Two artifacts that cannot share one routed graph."""


def check_pair(full: manifests.Manifest, reduced: manifests.Manifest) -> None:
    """Refuse pairs a routed graph cannot join: one line naming what differs."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise RouteError(message)

    need(full.length_config.is_full and not full.is_runtime, "--full must be a full graph (every layer keeps every token)")
    need(reduced.is_reduced and not reduced.is_runtime and not reduced.length_config.full_up_to,
         "--reduced must be a graph of one reduced configuration")
    need(not reduced.feeding["pad_to_seq_len"], "the reduced graph sees padding; a routed graph trims it")
    need(full.precision == reduced.precision, f"the graphs differ in precision ({full.precision} vs {reduced.precision})")
    need(full.interface.inputs == reduced.interface.inputs, "the graphs take different inputs")
    need(_same_model(full.source_model, reduced.source_model),
         f"the graphs come from different models ({full.source_model} vs {reduced.source_model})")
    need(full.length_config.seq_len == reduced.length_config.seq_len and full.doc_stride == reduced.doc_stride,
         "the graphs differ in sequence length or doc stride")
    need(min(full.opset, reduced.opset) >= MIN_OPSET,
         f"a routed graph needs opset {MIN_OPSET} or later (export --opset), the graphs have {min(full.opset, reduced.opset)}")
    need(full.feeding == reduced.feeding, "the graphs are fed differently (one is dynamic INT8)")


def _same_model(a: str, b: str) -> bool:
    """Source models as recorded by export (as given where it ran): the same folder, or the same string."""
    if Path(a).is_dir() and Path(b).is_dir():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def _branch(model: "onnx.ModelProto", prefix: str, inputs: dict[str, str]) -> "onnx.GraphProto":
    """The model's graph as an If branch: names prefixed apart, graph inputs read from the outer scope's `inputs`."""
    from onnx import compose

    graph = compose.add_prefix_graph(model.graph, prefix)
    _point_subgraphs_at(graph, {i.name[len(prefix):]: i.name for i in graph.initializer})
    outer = {prefix + name: value for name, value in inputs.items()}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in outer:
                node.input[i] = outer[name]
    _point_subgraphs_at(graph, outer)
    del graph.input[:]
    return graph


def _point_subgraphs_at(graph: "onnx.GraphProto", renamed: dict[str, str], shadowed: frozenset = frozenset()) -> None:
    """Rename, in every nested subgraph (a reduced graph's If-guarded attention), its reads of outer names per
    `renamed`, where no enclosing subgraph defines the name itself. onnx.compose.add_prefix_graph recurses into
    subgraphs before it renames initializers, so their reads of the graph's constants keep the old names; and the
    branch's inputs, read from the routed graph's trimmed inputs, are renamed here at every depth."""

    for node in graph.node:
        for sub in subgraphs(node):
            own = shadowed | defined_names(sub)
            for inner in sub.node:
                inner.input[:] = [renamed[x] if x in renamed and x not in own else x for x in inner.input]
            _point_subgraphs_at(sub, renamed, frozenset(own))


ROUTE_CONSTANTS = {  # the outer graph's constants, name: (shape, values); int64 unless in FLOAT_ROUTE_CONSTANTS
    "route_c0": ([], [0]), "route_c1": ([], [1]), "route_c0_1d": ([1], [0]), "route_c1_1d": ([1], [1]),
    "route_c000": ([3], [0, 0, 0]), "route_pad_logit": ([], [PAD_LOGIT]),
}
FLOAT_ROUTE_CONSTANTS = ("route_pad_logit",)


def _trim_nodes(inputs: list[str]) -> tuple[list["onnx.NodeProto"], dict[str, str]]:
    """Step 1: the longest real window's length L over the batch (last column holding a real token), every input
    sliced to L columns, `route_short` (L <= threshold) and the pads that restore the width."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Shape", ["attention_mask"], ["route_shape"]),
        helper.make_node("Gather", ["route_shape", "route_c1"], ["route_width"], axis=0),  # scalar W
        helper.make_node("Add", ["route_width", "route_c1"], ["route_width_plus1"]),
        helper.make_node("Range", ["route_c1", "route_width_plus1", "route_c1"], ["route_positions"]),  # 1..W
        helper.make_node("Cast", ["attention_mask"], ["route_mask64"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["route_mask64", "route_c0_1d"], ["route_columns"], keepdims=0),
        helper.make_node("Mul", ["route_columns", "route_positions"], ["route_last"]),
        helper.make_node("ReduceMax", ["route_last"], ["route_longest0"], keepdims=1),  # [1]
        helper.make_node("Max", ["route_longest0", "route_c1_1d"], ["route_longest"]),
        helper.make_node("LessOrEqual", ["route_longest", "route_threshold"], ["route_short"]),
        helper.make_node("Unsqueeze", ["route_width", "route_c0_1d"], ["route_width_1d"]),
        helper.make_node("Sub", ["route_width_1d", "route_longest"], ["route_padding"]),
        helper.make_node("Concat", ["route_c000", "route_padding"], ["route_pads"], axis=0),  # [B, L] -> [B, W]
    ]
    trimmed = {name: f"route_trimmed_{name}" for name in inputs}
    nodes += [helper.make_node("Slice", [name, "route_c0_1d", "route_longest", "route_c1_1d"], [trimmed[name]])
              for name in inputs]
    return nodes, trimmed


def _full_branch(full_model: "onnx.ModelProto", trimmed: dict[str, str], kept_outputs: tuple[str, ...]) -> "onnx.GraphProto":
    """Step 2, then-branch: the full graph on the trimmed inputs, and every position as each layer's kept positions
    (the reduced graph's interface)."""
    from onnx import TensorProto, helper

    graph = _branch(full_model, "full/", trimmed)
    spans = list(graph.output[:2])
    del graph.output[:]
    graph.output.extend(spans)
    graph.node.extend([
        helper.make_node("Shape", [trimmed["input_ids"]], ["full/route_shape"]),
        helper.make_node("Gather", ["full/route_shape", "route_c1"], ["full/route_len"], axis=0),
        helper.make_node("Range", ["route_c0", "full/route_len", "route_c1"], ["full/route_range"]),
        helper.make_node("Unsqueeze", ["full/route_range", "route_c0_1d"], ["full/route_row"]),
        helper.make_node("Expand", ["full/route_row", "full/route_shape"], ["full/route_all"]),
    ])
    for name in kept_outputs:
        graph.node.append(helper.make_node("Identity", ["full/route_all"], [f"full/route_{name}"]))
        graph.output.append(helper.make_tensor_value_info(f"full/route_{name}", TensorProto.INT64, None))
    return graph


def compose(full_model: "onnx.ModelProto", reduced_model: "onnx.ModelProto", *, full_up_to: int,
            kept_outputs: tuple[str, ...]) -> "onnx.ModelProto":
    """The routed ModelProto (see the module docstring): trim, If(longest real window <= full_up_to), restore."""
    import onnx
    from onnx import TensorProto, helper

    nodes, trimmed = _trim_nodes([i.name for i in reduced_model.graph.input])
    then_graph = _full_branch(full_model, trimmed, kept_outputs)
    else_graph = _branch(reduced_model, "reduced/", trimmed)
    for graph in (then_graph, else_graph):  # batch and width differ from run to run
        for out in graph.output:
            out.type.tensor_type.ClearField("shape")
    routed = [f"route_{name}" for name in [*SPAN_OUTPUTS, *kept_outputs]]
    nodes.append(helper.make_node("If", ["route_short"], routed, then_branch=then_graph, else_branch=else_graph))
    nodes += [helper.make_node("Pad", [f"route_{name}", "route_pads", "route_pad_logit"], [name])  # step 3
              for name in SPAN_OUTPUTS]
    nodes += [helper.make_node("Identity", [f"route_{name}"], [name]) for name in kept_outputs]
    constants = [helper.make_tensor(name, TensorProto.FLOAT if name in FLOAT_ROUTE_CONSTANTS else TensorProto.INT64,
                                    shape, values) for name, (shape, values) in ROUTE_CONSTANTS.items()]
    constants.append(helper.make_tensor("route_threshold", TensorProto.INT64, [1], [full_up_to]))
    graph = helper.make_graph(nodes, "qtool_routed", list(reduced_model.graph.input),
                              list(reduced_model.graph.output), initializer=constants)
    opsets: dict[str, int] = {}  # the later of the two per domain (INT8 passes raise a reduced graph's opset)
    for o in [*full_model.opset_import, *reduced_model.opset_import]:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = max(full_model.ir_version, reduced_model.ir_version)
    onnx.checker.check_model(model)
    return model


def synthetic_window(width: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """One window of `width` real tokens ([CLS] question [SEP] context [SEP], the question a sixth of the window, at
    most 16 tokens) for timing and checks: what a graph costs depends on the window's length, not on its words."""
    rng = np.random.default_rng(seed)
    question = max(0, min(16, width // 6))
    ids = rng.integers(1000, 20000, (1, width)).astype(np.int64)
    ids[0, 0], ids[0, min(question + 1, width - 1)], ids[0, width - 1] = 101, 102, 102
    types = np.zeros((1, width), np.int64)
    types[0, question + 2:] = 1
    return {"input_ids": ids, "attention_mask": np.ones((1, width), np.int64), "token_type_ids": types}


def _feed(session: "ort.InferenceSession", window: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The window's inputs the session takes (RoBERTa and DistilBERT graphs have no token_type_ids)."""
    return {k: v for k, v in window.items() if k in {i.name for i in session.get_inputs()}}


def measure_crossover(full_session: "ort.InferenceSession", reduced_session: "ort.InferenceSession", *,
                      widths: tuple[int, ...], rounds: int = 5, repeat: int = 10,
                      log: Callable[[str], None] = print) -> Crossover:
    """Milliseconds per window of both graphs at each width (batch 1, interleaved rounds, medians)."""

    full_ms, reduced_ms = [], []
    for width in widths:
        window = synthetic_window(width)
        feeds = {"full": _feed(full_session, window), "reduced": _feed(reduced_session, window)}
        ms = interleaved_ms({"full": lambda: full_session.run(None, feeds["full"]),
                             "reduced": lambda: reduced_session.run(None, feeds["reduced"])},
                            rounds=rounds, warmup=1, repeat=repeat, untimed_first=True)
        full_ms.append(ms["full"])
        reduced_ms.append(ms["reduced"])
        log(f"  {width:>4} tokens: full {ms['full']:.1f} ms, reduced {ms['reduced']:.1f} ms")
    return Crossover(tuple(widths), tuple(full_ms), tuple(reduced_ms))


def check_routed(graph: Path, full_graph: Path, reduced_graph: Path, full_up_to: int, seq_len: int) -> dict[str, object]:
    """Run the routed graph beside its two parts on windows on both sides of the threshold (alone, padded to seq_len,
    and two of one side in a batch): its span logits on real tokens must be its branch's. The validation record."""

    routed, full, reduced = (onnx_session(p) for p in (graph, full_graph, reduced_graph))
    widths = sorted({max(4, full_up_to - 1), full_up_to, min(seq_len, full_up_to + 1), seq_len})
    worst = 0.0
    for width in widths:
        branch = full if width <= full_up_to else reduced
        shorter = synthetic_window(max(4, width - 3), seed=width + 1)
        window = synthetic_window(width, seed=width)
        batch = {k: np.concatenate([v, np.pad(shorter[k], ((0, 0), (0, width - shorter[k].shape[1])))])
                 for k, v in window.items()}
        padded = {k: np.pad(v, ((0, 0), (0, seq_len - width))) for k, v in window.items()}
        want = [branch.run(list(SPAN_OUTPUTS), _feed(branch, w)) for w in (window, shorter)]
        short = shorter["input_ids"].shape[1]
        for feed, rows in ((window, [(0, width, 0)]), (padded, [(0, width, 0)]), (batch, [(0, width, 0), (1, short, 1)])):
            got = routed.run(list(SPAN_OUTPUTS), _feed(routed, feed))
            for row, n, which in rows:
                worst = max(worst, *(float(np.abs(g[row, :n] - w[0, :n]).max()) for g, w in zip(got, want[which])))
            if feed is padded and width < seq_len and not np.all(got[0][:, width:] == PAD_LOGIT):
                raise RouteError(f"{graph}: padding positions did not get PAD_LOGIT")
    if worst > 1e-4:
        raise RouteError(f"{graph}: the routed graph's logits differ from its branch's by {worst:.2e}")
    return {"windows": f"synthetic, of {', '.join(map(str, widths))} tokens: alone, padded to seq_len, and beside a "
                       "window 3 tokens shorter", "max_abs_diff_vs_branch": worst}


def route_artifacts(full_folder: str | Path, reduced_folder: str | Path, out: str | Path | None = None, *,
                    full_up_to: int | None = None, rounds: int = 5, log: Callable[[str], None] = print) -> Path:
    """Write the routed artifact of a full and a reduced graph of one model (see the module docstring).

    `full_up_to` None: measured here, the longest window the full graph runs no slower than the reduced one.
    `out` None: beside the reduced artifact, its name and '-full<full_up_to>'. `out` is the artifact folder itself:
    refused if it is, holds or lies inside --full or --reduced, or holds anything but a routed artifact
    (`toolchain.artifact.output`)."""
    import onnx

    full_folder, reduced_folder = Path(full_folder), Path(reduced_folder)
    full, reduced = manifests.load(full_folder), manifests.load(reduced_folder)
    check_pair(full, reduced)
    inputs = (("--full", full_folder), ("--reduced", reduced_folder))
    if out:  # before timing; the default name waits for the threshold
        output.check_target(out, OutputKind.ROUTED_ARTIFACT, inputs=inputs)
    full_graph, reduced_graph = full_folder / full.graph, reduced_folder / reduced.graph
    sessions = onnx_session(full_graph), onnx_session(reduced_graph)
    for folder, session in zip((full_folder, reduced_folder), sessions):
        manifests.check_runs(folder, session)  # each part runs what its manifest says, or nothing is routed
    seq_len = reduced.length_config.seq_len
    crossover = None
    if full_up_to is None:
        widths = timed_widths(seq_len)
        log(f"timing both graphs at {len(widths)} window lengths (batch 1, {rounds} interleaved rounds)")
        crossover = measure_crossover(*sessions, widths=widths, rounds=rounds, log=log)
        full_up_to = crossover.full_up_to
        if not full_up_to:
            raise RouteError(f"the reduced graph is faster than the full one at every length measured "
                             f"({', '.join(map(str, widths))}): nothing to route; ship {reduced_folder}")
        if full_up_to >= seq_len:
            raise RouteError(f"the full graph is no slower than the reduced one at every length measured: "
                             f"nothing to route; ship {full_folder}")
    if not 0 < full_up_to < seq_len:
        raise RouteError(f"--full-up-to must be between 1 and {seq_len - 1} tokens, got {full_up_to}")
    out = output.check_target(out or reduced_folder.parent / f"{reduced_folder.name}-full{full_up_to}",
                              OutputKind.ROUTED_ARTIFACT, inputs=inputs)
    config = replace(reduced.length_config, full_up_to=full_up_to)
    config.validate(len(config.keep))
    model = compose(onnx.load(str(full_graph)), onnx.load(str(reduced_graph)), full_up_to=full_up_to,
                    kept_outputs=reduced.interface.kept_outputs)
    with artifact.staging(out, OutputKind.ROUTED_ARTIFACT) as tmp:
        onnx.save(model, str(tmp / artifact.GRAPH))
        artifact.copy_files_besides_graph(reduced_folder, reduced.files, reduced.graph, tmp)
        validation = check_routed(tmp / artifact.GRAPH, full_graph, reduced_graph, full_up_to, seq_len)
        record = {"full": {"folder": full_folder.name, "sha256": full.files[full.graph],
                           "recipe": ((full.quantization or {}).get("recipe") or {}).get("name")},
                  "reduced": {"folder": reduced_folder.name, "sha256": reduced.files[reduced.graph]},
                  "crossover": crossover.to_dict() if crossover else None}
        manifests.write(tmp, replace(reduced, graph=artifact.GRAPH, length_config=config, validation=validation,
                                     route=record, source_fp32=None, files={}, created=None, versions={},
                                     opset=max(full.opset, reduced.opset)))
    log(f"wrote {out}: windows of at most {full_up_to} tokens run {full_folder.name}, longer ones {reduced_folder.name}")
    return out

