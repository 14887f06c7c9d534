"""ONNX export of Drop-and-Restore QA models, one graph per length configuration, validated against PyTorch.

Kept apart as in optimum's exporter: the configuration (LengthConfig), the export (torch.export through
the dynamo ONNX exporter, dynamic batch and sequence axes, k computed in-graph from the input length),
and the validation (onnxruntime vs PyTorch on real SQuAD features: logits and kept tokens).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import artifact, squad
from .model import DropAndRestoreQA, LengthConfig, flops_ratio
from .verify import INPUT_NAMES, kept_agreement, onnx_session, predict_onnx, predict_torch

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-3


class ExportValidationError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model."""


def output_names(config: LengthConfig) -> list[str]:
    names = ["start_logits", "end_logits"]
    if not config.is_full:
        names += [f"kept_{i}" for i in range(len(config.keep))]
    return names


def export_graph(model: torch.nn.Module, config: LengthConfig, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write one ONNX graph running `model` under `config`; batch and sequence axes stay dynamic.

    Reduced configurations also output `kept_i`: the original positions layer i kept, for agreement checks.
    """
    module = DropAndRestoreQA(model, config, return_kept=not config.is_full).eval()
    seq = config.seq_len
    sample = (
        torch.full((2, seq), 1000, dtype=torch.long),
        torch.ones(2, seq, dtype=torch.long),
        torch.zeros(2, seq, dtype=torch.long),
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=model.config.max_position_embeddings)
    dims = {name: {0: batch, 1: length} for name in INPUT_NAMES}
    path = Path(path)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # silences "torchvision is not installed" chatter
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            sample,
            input_names=list(INPUT_NAMES),
            output_names=output_names(config),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dims,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    tidy_graph(path)
    return path


def tidy_graph(path: str | Path) -> None:
    """Name nodes after the module they came from ('...layer.3.output.dense/MatMul') and drop export metadata.

    Readable names let quantization recipes select ops by role; the dropped metadata holds local stack traces.
    """
    import ast

    import onnx

    model = onnx.load(str(path))
    seen: dict[str, int] = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        except (ValueError, SyntaxError):
            scopes = []
        modules = [s for s in scopes[:-1] if s]
        base = f"{modules[-1] if modules else 'graph'}/{node.op_type}"
        seen[base] = seen.get(base, -1) + 1
        node.name = base if seen[base] == 0 else f"{base}_{seen[base]}"
        del node.metadata_props[:]
    del model.metadata_props[:]
    model.producer_name = "qtool"
    onnx.save(model, str(path))


def validate_graph(
    path: str | Path,
    model: torch.nn.Module,
    config: LengthConfig,
    features: squad.Features,
    atol: float = DEFAULT_ATOL,
) -> dict:
    """Run the graph and PyTorch on the same features; raise ExportValidationError on any mismatch.

    Logits are compared on real (non-padding) positions only: padding tokens never carry answers and,
    all scoring last, tie arbitrarily in TopK. Kept tokens must agree exactly on real positions.
    """
    session = onnx_session(path)
    got = predict_onnx(session, features)
    want = predict_torch(model, features, config)
    real = features.attention_mask.astype(bool)
    diff = max(
        float(np.abs(got.start_logits - want.start_logits)[real].max()),
        float(np.abs(got.end_logits - want.end_logits)[real].max()),
    )
    agreement = kept_agreement(want, got, features.attention_mask) if not config.is_full else []
    report = {
        "features": len(features),
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
    source: str = "",
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
) -> Path:
    """Export, validate and write one shippable artifact folder (atomic: nothing is left on failure)."""
    dest = Path(dest)
    hidden, ffn = model.config.hidden_size, model.config.intermediate_size
    with artifact.staging(dest) as tmp:
        export_graph(model, config, tmp / artifact.GRAPH, opset=opset)
        report = validate_graph(tmp / artifact.GRAPH, model, config, features, atol=atol)
        tokenizer.save_pretrained(tmp)
        artifact.write_manifest(
            tmp,
            {
                "graph": artifact.GRAPH,
                "precision": "fp32",
                "length_config": {
                    "keep": list(config.keep),
                    "seq_len": config.seq_len,
                    "scaling": "k_i(L) = min(n_in, max(1, ceil(k_i * L / seq_len))) for an input of L tokens",
                },
                "flops_ratio": flops_ratio(config, hidden, ffn),
                "opset": opset,
                "inputs": list(INPUT_NAMES),
                "outputs": output_names(config),
                "source_model": str(source),
                "model_type": model.config.model_type,
                "max_answer_length": squad.MAX_ANSWER_LENGTH,
                "doc_stride": squad.DOC_STRIDE,
                "validation": {"against": "pytorch-fp32", **report},
                "quantization": None,
                "metrics": {},
            },
        )
    return dest


def export_configs(
    model_dir: str | Path,
    configs: Sequence[str],
    out: str | Path,
    squad_file: str = "dev",
    samples: int = 16,
    seq_len: int = squad.MAX_LENGTH,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
) -> list[Path]:
    """Export each configuration ('full' or 'k1,k2,...') of a trained model into out/<precision>-<config>/."""
    from .model import load_qa_model

    model, tokenizer = load_qa_model(model_dir)
    layers = len(model.base_model.encoder.layer)
    parsed = [LengthConfig.parse(c, layers, seq_len) for c in configs]
    examples = squad.load_squad(squad_file, limit=samples)
    features = squad.featurize(examples, tokenizer, max_length=seq_len)
    return [
        export_artifact(model, tokenizer, c, Path(out) / artifact_name(c), features, str(model_dir), opset, atol)
        for c in parsed
    ]
