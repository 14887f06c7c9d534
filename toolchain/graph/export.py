"""ONNX export of Drop-and-Restore QA models, one graph per length configuration, validated against PyTorch.

Kept apart as in optimum's exporter: the configuration (LengthConfig), the export (torch.export through
the dynamo ONNX exporter, dynamic batch and sequence axes, k computed in-graph from the input length),
and the validation (onnxruntime vs PyTorch on real SQuAD features: logits and kept tokens).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from qtool_runtime.contract import MenuEntry, Precision
from qtool_runtime.errors import QtoolError

import numpy as np
import torch

from ..artifact import artifact, output
from ..data import squad
from ..artifact import manifest as manifests
from ..core.length import LengthConfig
from ..model.families import dims_of, family_of
from ..model.drop_and_restore import DropAndRestoreQA, RuntimeConfigQA, flops_ratio
from ..artifact.output import OutputKind, RootKind, Target
from ..core.settings import ExportSettings
from ..artifact.interface import GraphInterface
from .runtime import PROTOCOLS, kept_agreement, near_tie_flips, onnx_session, predict_onnx, predict_torch
from .passes import EXPORT_PASSES, run_passes

DEFAULT_OPSET = ExportSettings.opset
RUNTIME = "runtime"  # --config RUNTIME: the run-time configuration graph (keep counts are an input)
DEFAULT_ATOL = ExportSettings.atol
DEFAULT_TIE_ATOL = ExportSettings.tie_atol


class ExportValidationError(QtoolError, RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model."""


class ExportError(QtoolError, ValueError):
    """An export request that cannot be honoured (opset, sequence length)."""


# Export wraps the QA model as `DropAndRestoreQA.model`, so a module's nodes are named 'model.<module path>/<Op>'.
NODE_PREFIX = "model."


def export_graph(model: torch.nn.Module, config: LengthConfig, path: str | Path, opset: int = DEFAULT_OPSET, *,
                 graph_passes: dict[str, int] | None = None) -> Path:
    """Write one ONNX graph running `model` under `config`; batch and sequence axes stay dynamic.

    Reduced configurations also output `kept_i`: the original positions layer i kept, for agreement checks.
    `graph_passes`, when given, receives each graph pass's rewrite count (`passes.PassRun.rewrites`).
    """
    module = DropAndRestoreQA(model, config, return_kept=not config.is_full).eval()
    interface = GraphInterface.for_config(config, family_of(model).inputs)
    return _export(module, model, interface, config.seq_len, path, opset, graph_passes=graph_passes)


def export_runtime_graph(model: torch.nn.Module, layout: LengthConfig, path: str | Path,
                         opset: int = DEFAULT_OPSET, *, graph_passes: dict[str, int] | None = None) -> Path:
    """Write the run-time configuration graph: keep counts are its last input (int64 [layers], cap rule).

    TopK and the slices that follow take their sizes from that input, so one graph runs every configuration
    whose skipped layers are `layout`'s (the layers it skips are an export-time choice: they have no nodes).
    `graph_passes` as for `export_graph`.
    """
    module = RuntimeConfigQA(model, layout).eval()
    interface = GraphInterface.for_runtime(layout, family_of(model).inputs)
    layers = len(layout.keep)
    sample_keep = torch.tensor([max(1, layout.seq_len * (layers - i) // (layers + 1)) for i in range(layers)])
    return _export(module, model, interface, layout.seq_len, path, opset, extra=(sample_keep,),
                   graph_passes=graph_passes)


def _export(module: torch.nn.Module, model: torch.nn.Module, interface: GraphInterface, seq: int, path: str | Path,
            opset: int, extra: tuple = (), graph_passes: dict[str, int] | None = None) -> Path:
    """torch.export through the dynamo ONNX exporter, batch and sequence axes dynamic, then the tidy passes."""
    family = family_of(model)
    sample = tuple(
        torch.full((2, seq), 1000, dtype=torch.long) if name == "input_ids"
        else torch.ones(2, seq, dtype=torch.long) if name == "attention_mask" else torch.zeros(2, seq, dtype=torch.long)
        for name in family.inputs
    ) + extra
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=family.dims(model.config).max_positions)
    dims = tuple({0: batch, 1: length} for _ in family.inputs) + tuple(None for _ in extra)
    if any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        dims = (dims,)  # forward(*inputs): torch.export binds every input to one parameter
    path = Path(path)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # silences "torchvision is not installed" chatter
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            sample,
            input_names=list(interface.inputs),
            output_names=list(interface.outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dims,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    rewrites = tidy_graph(path)
    if graph_passes is not None:
        graph_passes.update(rewrites)
    import onnx

    written = artifact.opset_of(onnx.load(str(path), load_external_data=False))
    if written != opset:
        raise ExportError(f"the exporter cannot write opset {opset} (it wrote {written}); use --opset {written} or higher")
    return path


def weight_roles(path: str | Path, role_paths: dict[str, list[str]]) -> dict[str, list[str]]:
    """Weight MatMul node names by role, from the module paths the family adapter gives each role.

    Every weight MatMul must belong to exactly one role's module, and every role must have a node: a graph
    we cannot fully account for is an export error, never a silent "quantize everything".
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    owner = {f"{NODE_PREFIX}{module}/": role for role, modules in role_paths.items() for module in modules}
    roles: dict[str, list[str]] = {r: [] for r in role_paths}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants:
            continue
        matched = [role for prefix, role in owner.items() if node.name.startswith(prefix)]
        if len(matched) != 1:
            raise ExportError(f"weight MatMul {node.name!r} belongs to {len(matched)} role modules; expected exactly one")
        roles[matched[0]].append(node.name)
    empty = [r for r, names in roles.items() if not names]
    if empty:
        raise ExportError(f"no weight MatMul found for role(s) {empty} in {path}")
    return roles


def tidy_graph(path: str | Path) -> dict[str, int]:
    """Name nodes after the module they came from, drop export metadata, fuse GELU and the attention cores whose
    probabilities nothing else reads (passes.EXPORT_PASSES, checked pass by pass).

    Readable names let quantization recipes select ops by role; the dropped metadata holds local stack traces;
    one Gelu node lets onnxruntime fuse the bias before it, and one MultiHeadAttention node runs a layer's
    attention core in one kernel, as in the standard recipe's graph. Returns each pass's rewrite count.
    """
    import onnx

    done = run_passes(onnx.load(str(path)), EXPORT_PASSES)
    onnx.save(done.model, str(path))
    return done.rewrites


def validate_graph(
    path: str | Path,
    model: torch.nn.Module,
    config: LengthConfig,
    features: squad.Features,
    atol: float = DEFAULT_ATOL,
    *,
    runtime: bool = False,
    tie_atol: float = DEFAULT_TIE_ATOL,
) -> dict:
    """Run the graph and PyTorch on the same features under every input protocol; raise on any mismatch.

    `runtime`: the graph is a run-time configuration graph, fed `config`'s counts as its keep_counts input.

    Padded (every window at the configured length), unpadded (every window alone at its real length, which
    checks the in-graph length rule) and bucketed (length-sorted batches padded to their longest). Logits are compared
    on real (non-padding) positions only: padding never carries answers.

    Kept real tokens must agree, except where PyTorch ranked the tokens the two runs swapped within `tie_atol` of
    each other (a near tie: float32 attention sums differ between runtimes in their last bits). Such a window is
    reported and left out of the logit comparison, since every later layer sees other tokens; a swap farther apart
    than `tie_atol` is a wrong graph and is refused, and so is a graph where near ties leave under half the windows
    to compare.
    """
    session = onnx_session(path)
    where = f"{path} at {config.label}" if runtime else str(path)
    diff, agreement, ties = 0.0, [1.0] * (0 if config.is_full else len(config.keep)), []
    for protocol in PROTOCOLS:
        keep = [config.seq_len if k is None else k for k in config.keep] if runtime else None
        got = predict_onnx(session, features, protocol=protocol, keep=keep)  # faithful batching: no invariance assumed
        want = predict_torch(model, features, config, protocol=protocol, scores=not config.is_full)
        flips = near_tie_flips(want, got, features.attention_mask)
        wrong = [f for f in flips if not f.gap <= tie_atol]
        if wrong:
            w = max(wrong, key=lambda f: f.gap)
            raise ExportValidationError(
                f"{where}: kept tokens differ from PyTorch beyond a near tie ({protocol}: {len(wrong)} window(s); "
                f"window {w.window}, layer {w.layer}: tokens ranked {w.gap:.3g} apart, tie tolerance {tie_atol:.0e})")
        compared = features.attention_mask.astype(bool).copy()
        compared[[f.window for f in flips]] = False
        if 2 * int(compared.any(axis=1).sum()) < len(features):
            raise ExportValidationError(f"{where}: near ties changed the kept tokens of {len(flips)} of {len(features)} "
                                        f"windows ({protocol}); too few left to compare logits")
        diff = max(diff, float(np.abs(got.start_logits - want.start_logits)[compared].max(initial=0.0)),
                   float(np.abs(got.end_logits - want.end_logits)[compared].max(initial=0.0)))
        if not config.is_full:
            agreement = [min(a, b) for a, b in zip(agreement, kept_agreement(want, got, compared))]
        ties += [{"protocol": protocol, "window": f.window, "layer": f.layer, "gap": f.gap} for f in flips]
    if not np.isfinite(diff) or diff > atol:
        raise ExportValidationError(f"{where}: logits differ from PyTorch by {diff:.2e} (> atol {atol:.0e})")
    return {
        "features": len(features),
        "protocols": list(PROTOCOLS),
        "max_abs_diff": diff,
        "atol": atol,
        "kept_agreement": agreement,  # over the windows compared (near ties left out)
        "near_ties": {"tie_atol": tie_atol, "windows": ties},
    }


def validate_runtime_graph(path: str | Path, model: torch.nn.Module, configs: Sequence[LengthConfig],
                           features: squad.Features, atol: float = DEFAULT_ATOL,
                           tie_atol: float = DEFAULT_TIE_ATOL) -> dict:
    """validate_graph at each configuration the run-time graph is meant to run (raise at the first mismatch)."""
    reports = {c.label: validate_graph(path, model, c, features, atol, runtime=True, tie_atol=tie_atol)
               for c in configs}
    return {"features": len(features), "protocols": list(PROTOCOLS), "atol": atol,
            "max_abs_diff": max(r["max_abs_diff"] for r in reports.values()),
            "configs": {label: {"max_abs_diff": r["max_abs_diff"], "kept_agreement": r["kept_agreement"],
                                "near_ties": r["near_ties"]}
                        for label, r in reports.items()}}


def runtime_layout(menu: Sequence[LengthConfig]) -> LengthConfig:
    """The run-time graph's full configuration: every layer at seq_len, except the layers every entry skips."""
    first = menu[0]
    skips = {c.skipped for c in menu}
    if len(skips) > 1:
        raise ExportError(f"menu configurations skip different layers {sorted(skips)}; skipped layers are an "
                          "export-time choice: export one run-time graph per set of skipped layers")
    keep = tuple(None if k is None else first.seq_len for k in first.keep)
    return LengthConfig(keep, first.seq_len, variant=first.variant)


def export_runtime_artifact(model: torch.nn.Module, tokenizer, menu: Sequence[LengthConfig], dest: str | Path,
                            features: squad.Features, *, settings: ExportSettings = ExportSettings(), source: str = ""
                            ) -> Path:
    """Export, validate at every menu configuration and at full, and write the run-time configuration artifact.

    The menu always starts with the layout's full configuration (what a server runs when it is idle)."""
    layout = runtime_layout(menu)
    menu = list(dict.fromkeys([layout, *menu]))
    dims = dims_of(model)
    with artifact.staging(Path(dest), OutputKind.FP32_ARTIFACT) as tmp:
        graph_passes: dict[str, int] = {}
        graph = export_runtime_graph(model, layout, tmp / artifact.GRAPH, opset=settings.opset,
                                     graph_passes=graph_passes)
        report = validate_runtime_graph(graph, model, menu, features, atol=settings.atol, tie_atol=settings.tie_atol)
        _write_fp32_folder(
            tmp, model, tokenizer, layout, report,
            interface=GraphInterface.for_runtime(layout, family_of(model).inputs), settings=settings, source=source,
            menu=[MenuEntry(c.keep, macs_ratio=flops_ratio(c, dims.hidden, dims.ffn)) for c in menu],
            graph_passes=graph_passes)
    return Path(dest)


def _write_fp32_folder(
    tmp: Path,
    model: torch.nn.Module,
    tokenizer,
    config: LengthConfig,
    report: dict,
    *,
    interface: GraphInterface,
    settings: ExportSettings,
    source: str,
    menu: list[MenuEntry] | None = None,
    graph_passes: dict[str, int] | None = None,
) -> None:
    """The tokenizer and the manifest beside an exported, validated FP32 graph (one writer for both graph kinds).
    `graph_passes`: each export graph pass's rewrite count (`passes.PassRun.rewrites`)."""
    family = family_of(model)
    dims = family.dims(model.config)
    tokenizer.save_pretrained(tmp)
    manifests.write(tmp, manifests.Manifest(
        graph=artifact.GRAPH,
        precision=Precision.FP32,
        length_config=config,
        interface=interface,
        opset=settings.opset,
        max_positions=int(dims.max_positions),
        doc_stride=settings.window_stride,
        max_answer_length=squad.MAX_ANSWER_LENGTH,
        source_model=str(source),
        model_type=model.config.model_type,
        flops_ratio=flops_ratio(config, dims.hidden, dims.ffn),
        graph_passes=graph_passes,
        roles=weight_roles(tmp / artifact.GRAPH, family.role_paths(model)),
        validation={"against": "pytorch-fp32", **report},
        menu=menu,
    ))


def artifact_name(config: LengthConfig, precision: str = Precision.FP32) -> str:
    return f"{precision}-{config.name()}"


def export_artifact(model: torch.nn.Module, tokenizer, config: LengthConfig, dest: str | Path, features: squad.Features,
                    *, settings: ExportSettings = ExportSettings(), source: str = "") -> Path:
    """Export, validate and write one shippable artifact folder (atomic: nothing is left on failure)."""
    dest = Path(dest)
    with artifact.staging(dest, OutputKind.FP32_ARTIFACT) as tmp:
        graph_passes: dict[str, int] = {}
        graph = export_graph(model, config, tmp / artifact.GRAPH, opset=settings.opset, graph_passes=graph_passes)
        report = validate_graph(graph, model, config, features, atol=settings.atol, tie_atol=settings.tie_atol)
        _write_fp32_folder(tmp, model, tokenizer, config, report,
                           interface=GraphInterface.for_config(config, family_of(model).inputs),
                           settings=settings, source=source, graph_passes=graph_passes)
    return dest


def export_configs(
    model_dir: str | Path,
    configs: Sequence[str],
    out: str | Path,
    *,
    settings: ExportSettings = ExportSettings(),
    menu: Sequence[str] = (),
) -> list[Path]:
    """Export each configuration ('full' or 'k1,k2,...') of a trained model into out/<precision>-<config>/.

    The configuration RUNTIME writes out/fp32-runtime/: one graph whose keep counts are an input, meant to run
    the `menu` configurations (and full), validated at each.

    Everything is checked before the first graph is written: configurations, the sequence length against
    the model's position table, the document stride against the sequence length, and every destination
    (`toolchain.artifact.output`: an artifact root; only artifacts of the same name are replaced). `variant=None` runs the
    model the way it was trained (the variant `qtool train` recorded; `qtool` otherwise).
    """
    from ..model.drop_and_restore import load_qa_model, trained_variant

    inputs = (("--model", model_dir), ("--squad", settings.squad_file))
    output.check_root(out, RootKind.ARTIFACTS, inputs=inputs)  # before the model loads
    model, tokenizer = load_qa_model(model_dir)
    settings = replace(settings, variant=settings.variant or trained_variant(model))
    dims = dims_of(model)
    seq_len, limit = settings.seq_len, int(dims.max_positions)
    if not 2 <= seq_len <= limit:
        raise ExportError(f"--seq-len {seq_len} is outside what the model takes (2..{limit} positions)")
    settings = replace(settings, doc_stride=settings.window_stride)
    if not 0 < settings.doc_stride < seq_len:
        raise ExportError(f"--doc-stride {settings.doc_stride} must be positive and smaller than --seq-len {seq_len}")
    parsed = [LengthConfig.parse(c, dims.layers, seq_len, variant=settings.variant) for c in configs if c != RUNTIME]
    menu_configs = [LengthConfig.parse(c, dims.layers, seq_len, variant=settings.variant) for c in menu]
    repeated = sorted({c.label for i, c in enumerate(menu_configs) if c in menu_configs[:i]})
    if repeated:
        raise ExportError(f"--menu {', '.join(repeated)} is given twice; give each configuration once")
    if RUNTIME in configs:
        if not menu_configs:
            raise ExportError(f"--config {RUNTIME} needs its menu: --menu k1,k2,... (repeatable), e.g. from qtool search")
        runtime_layout(menu_configs)  # refuse mixed skips or another rule before any work
    elif menu_configs:
        raise ExportError(f"--menu is for the run-time configuration graph; add --config {RUNTIME}")
    folders = export_folders(out, parsed, runtime=RUNTIME in configs)
    output.check_root(out, RootKind.ARTIFACTS, [Target(f, OutputKind.FP32_ARTIFACT) for f in folders], inputs=inputs)
    examples = squad.load_squad(settings.squad_file, limit=settings.samples)
    features = squad.featurize(examples, tokenizer, max_length=seq_len, doc_stride=settings.doc_stride)
    written = [export_artifact(model, tokenizer, c, f, features, settings=settings, source=str(model_dir))
               for c, f in zip(parsed, folders)]
    if RUNTIME in configs:
        written.append(export_runtime_artifact(model, tokenizer, menu_configs, folders[-1], features,
                                               settings=settings, source=str(model_dir)))
    return written


def export_folders(out: str | Path, configs: Sequence[LengthConfig], *, runtime: bool = False) -> list[Path]:
    """The artifact folders export writes: out/fp32-<config> for each configuration, then out/fp32-runtime."""
    names = [artifact_name(c) for c in configs] + ([f"{Precision.FP32}-{RUNTIME}"] if runtime else [])
    return [Path(out) / name for name in names]


def planned_folders(model_dir: str | Path, configs: Sequence[str], out: str | Path,
                    settings: ExportSettings = ExportSettings()) -> list[Path]:
    """The folders `export_configs` would write, from the model's config.json alone (no weights): what a command
    running several stages (bench) checks before the first of them starts."""
    from transformers import AutoConfig

    from ..model.drop_and_restore import recorded_variant

    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    variant = settings.variant or recorded_variant(config)
    parsed = [LengthConfig.parse(c, dims_of(config).layers, settings.seq_len, variant=variant)
              for c in configs if c != RUNTIME]
    return export_folders(out, parsed, runtime=RUNTIME in configs)

