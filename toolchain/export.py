"""ONNX export of Drop-and-Restore QA models, one graph per length configuration, validated against PyTorch.

Kept apart as in optimum's exporter: the configuration (LengthConfig), the export (torch.export through
the dynamo ONNX exporter, dynamic batch and sequence axes, k computed in-graph from the input length),
and the validation (onnxruntime vs PyTorch on real SQuAD features: logits and kept tokens).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from qtool_runtime.errors import QtoolError

import numpy as np
import torch

from . import artifact, atomic, squad
from . import manifest as manifests
from .length import LengthConfig
from .families import dims_of, family_of
from .model import DropAndRestoreQA, flops_ratio
from .runtime import PROTOCOLS, GraphInterface, kept_agreement, onnx_session, predict_onnx, predict_torch

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-3


class ExportValidationError(QtoolError, RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model."""


class ExportError(QtoolError, ValueError):
    """An export request that cannot be honoured (opset, sequence length)."""


# Export wraps the QA model as `DropAndRestoreQA.model`, so a module's nodes are named 'model.<module path>/<Op>'.
NODE_PREFIX = "model."


def export_graph(model: torch.nn.Module, config: LengthConfig, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write one ONNX graph running `model` under `config`; batch and sequence axes stay dynamic.

    Reduced configurations also output `kept_i`: the original positions layer i kept, for agreement checks.
    """
    module = DropAndRestoreQA(model, config, return_kept=not config.is_full).eval()
    family = family_of(model)
    seq = config.seq_len
    sample = tuple(
        torch.full((2, seq), 1000, dtype=torch.long) if name == "input_ids"
        else torch.ones(2, seq, dtype=torch.long) if name == "attention_mask" else torch.zeros(2, seq, dtype=torch.long)
        for name in family.inputs
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=family.dims(model.config).max_positions)
    dims = {name: {0: batch, 1: length} for name in family.inputs}
    path = Path(path)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # silences "torchvision is not installed" chatter
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            sample,
            input_names=list(family.inputs),
            output_names=list(GraphInterface.for_config(config, family.inputs).outputs),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dims,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    tidy_graph(path)
    import onnx

    written = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
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


def tidy_graph(path: str | Path) -> None:
    """Name nodes after the module they came from and drop export metadata (passes.TIDY, checked pass by pass).

    Readable names let quantization recipes select ops by role; the dropped metadata holds local stack traces.
    """
    import onnx

    from .passes import TIDY, run_passes

    model = onnx.load(str(path))
    onnx.save(run_passes(model, TIDY), str(path))


def validate_graph(
    path: str | Path,
    model: torch.nn.Module,
    config: LengthConfig,
    features: squad.Features,
    atol: float = DEFAULT_ATOL,
) -> dict:
    """Run the graph and PyTorch on the same features under every input protocol; raise on any mismatch.

    Padded (every window at the configured length), unpadded (every window alone at its real length, which
    checks the in-graph length rule) and bucketed (length-sorted batches padded to their longest). Logits are compared on real (non-padding) positions only: padding
    never carries answers and, all scoring last, ties arbitrarily in TopK. Kept real tokens must agree exactly.
    """
    session = onnx_session(path)
    real = features.attention_mask.astype(bool)
    diff, agreement = 0.0, [1.0] * (0 if config.is_full else len(config.keep))
    for protocol in PROTOCOLS:
        got = predict_onnx(session, features, protocol=protocol)  # faithful batching: no invariance assumed
        want = predict_torch(model, features, config, protocol=protocol)
        diff = max(
            diff,
            float(np.abs(got.start_logits - want.start_logits)[real].max()),
            float(np.abs(got.end_logits - want.end_logits)[real].max()),
        )
        if not config.is_full:
            agreement = [min(a, b) for a, b in zip(agreement, kept_agreement(want, got, features.attention_mask))]
    report = {
        "features": len(features),
        "protocols": list(PROTOCOLS),
        "max_abs_diff": diff,
        "atol": atol,
        "kept_agreement": agreement,
    }
    if not np.isfinite(diff) or diff > atol:
        raise ExportValidationError(f"{path}: logits differ from PyTorch by {diff:.2e} (> atol {atol:.0e})")
    if any(a < 1.0 for a in agreement):
        raise ExportValidationError(f"{path}: kept tokens differ from PyTorch (per-layer agreement {agreement})")
    return report


def artifact_name(config: LengthConfig, precision: str = "fp32") -> str:
    return f"{precision}-{config.name()}"


def export_artifact(
    model: torch.nn.Module,
    tokenizer,
    config: LengthConfig,
    dest: str | Path,
    features: squad.Features,
    *,
    source: str = "",
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    doc_stride: int = squad.DOC_STRIDE,
) -> Path:
    """Export, validate and write one shippable artifact folder (atomic: nothing is left on failure)."""
    dest = Path(dest)
    family = family_of(model)
    dims = family.dims(model.config)
    with artifact.staging(dest) as tmp:
        graph = export_graph(model, config, tmp / artifact.GRAPH, opset=opset)
        report = validate_graph(graph, model, config, features, atol=atol)
        tokenizer.save_pretrained(tmp)
        manifests.write(tmp, manifests.Manifest(
            graph=artifact.GRAPH,
            precision="fp32",
            length_config=config,
            interface=GraphInterface.for_config(config, family.inputs),
            opset=opset,
            max_positions=int(dims.max_positions),
            doc_stride=doc_stride,
            max_answer_length=squad.MAX_ANSWER_LENGTH,
            source_model=str(source),
            model_type=model.config.model_type,
            flops_ratio=flops_ratio(config, dims.hidden, dims.ffn),
            roles=weight_roles(graph, family.role_paths(model)),
            validation={"against": "pytorch-fp32", **report},
        ))
    return dest


def export_configs(
    model_dir: str | Path,
    configs: Sequence[str],
    out: str | Path,
    *,
    squad_file: str = "dev",
    samples: int = 16,
    seq_len: int = squad.MAX_LENGTH,
    doc_stride: int | None = None,
    length_rule: str = "cap",
    variant: str | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
) -> list[Path]:
    """Export each configuration ('full' or 'k1,k2,...') of a trained model into out/<precision>-<config>/.

    Everything is checked before the first graph is written: configurations, the sequence length against
    the model's position table, the document stride against the sequence length. `variant=None` runs the
    model the way it was trained (the variant `qtool train` recorded; `qtool` otherwise).
    """
    from .model import load_qa_model, trained_variant

    atomic.check_writable_dir(out, "--out")
    model, tokenizer = load_qa_model(model_dir)
    variant = variant or trained_variant(model)
    dims = dims_of(model)
    limit = int(dims.max_positions)
    if not 2 <= seq_len <= limit:
        raise ExportError(f"--seq-len {seq_len} is outside what the model takes (2..{limit} positions)")
    doc_stride = squad.default_doc_stride(seq_len) if doc_stride is None else doc_stride
    if not 0 < doc_stride < seq_len:
        raise ExportError(f"--doc-stride {doc_stride} must be positive and smaller than --seq-len {seq_len}")
    parsed = [LengthConfig.parse(c, dims.layers, seq_len, length_rule, variant) for c in configs]
    examples = squad.load_squad(squad_file, limit=samples)
    features = squad.featurize(examples, tokenizer, max_length=seq_len, doc_stride=doc_stride)
    return [
        export_artifact(model, tokenizer, c, Path(out) / artifact_name(c), features, source=str(model_dir),
                        opset=opset, atol=atol, doc_stride=doc_stride)
        for c in parsed
    ]

