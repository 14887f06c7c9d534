"""The INT8 recipes and how one is applied: which weight MatMuls a recipe quantizes (by the roles export recorded),
the calibration reader, and one quantization through Intel Neural Compressor's ONNX flavour followed by the INT8
graph passes. Which recipe ships is the tuning loop's choice (quantize.py)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import onnx
from qtool_runtime.contract import Engine, FloatPrecision, QuantMode
from qtool_runtime.errors import QtoolError

from ..artifact import manifest as manifests
from ..data import squad
from ..graph.passes import INT8_PASSES, run_passes


class QuantizationError(QtoolError, RuntimeError):
    """Quantization could not produce a usable graph."""


@dataclass(frozen=True)
class Recipe:
    name: str
    mode: QuantMode = QuantMode.STATIC
    keep_fp32: tuple[str, ...] = ()  # roles left in FP32
    per_channel: bool = True
    calibration: Literal["minmax"] = "minmax"  # static activation ranges (RETIRED_RECIPES: why no other)
    embeddings: bool = True  # INT8 word-embedding table (size: 30,522 x d floats otherwise dominate)
    quant_format: Literal["QOperator", "QDQ"] = "QOperator"
    # the runtime the graph is for: onnxruntime's recipes end with the INT8 graph passes (onnxruntime-only fused
    # operators); OpenVINO's keep the standard QDQ form it fuses itself, and compute the rest at its default precision
    engine: Engine = Engine.ONNXRUNTIME

    @property
    def float_precision(self) -> FloatPrecision:
        """How the runtime computes the FP32 rest: onnxruntime as stated; OpenVINO at its default (bf16 on CPUs with
        AVX-512 BF16 or AMX), which ranked and answered as well as FP32 on held-out documents (results/openvino-runtime)."""
        return FloatPrecision.RUNTIME_DEFAULT if self.engine is Engine.OPENVINO else FloatPrecision.FP32

    @property
    def batchable(self) -> bool:
        """Answers do not depend on batch-mates: no activation scale is computed per batch."""
        return not self.mode.per_batch_scales

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        if self.mode == QuantMode.STATIC:
            parts = [f"static INT8 weight MatMuls (S8 {weights} weights, U8 inputs with {self.calibration} scales "
                     f"calibrated on SQuAD, FP32 outputs, {self.quant_format})"]
        else:
            parts = [f"dynamic INT8 weight MatMuls (S8 {weights} weights, U8 activations quantized per batch at run time)"]
        if self.keep_fp32:
            parts.append("FP32: " + ", ".join(self.keep_fp32))
        parts.append("INT8 word embeddings" if self.embeddings else "FP32 embeddings")
        if self.engine is Engine.OPENVINO:
            parts.append("for OpenVINO (no onnxruntime graph passes; the rest at the runtime's default precision)")
        return "; ".join(parts)


# Every recipe leaves the weight MatMuls' outputs FP32 (MatMulIntegerToFloat, the U8S8 kernel the dynamic path runs
# too): the FFN-out MatMul's output carries BERT's activation outliers. Retired after measuring (results/static-int8):
# U8 outputs (with or without SmoothQuant 0.5 or percentile ranges, or FFN-out left FP32) lost 3.6-4.8 F1, and 7-bit
# weights changed nothing on AVX2; no CPU here picked them.
RECIPES: tuple[Recipe, ...] = (
    # static: activation scales fixed on SQuAD, answers independent of batch-mates
    Recipe("static-fp32-out"),
    Recipe("static-fp32-out-qdq", quant_format="QDQ"),
    # the same static INT8 in QDQ form, for OpenVINO Runtime (results/openvino-runtime)
    Recipe("static-openvino", quant_format="QDQ", engine=Engine.OPENVINO),
    Recipe("static-fp32-out-ffn-out", keep_fp32=("ffn_out",)),
    Recipe("dynamic-all-pc", mode=QuantMode.DYNAMIC),
    Recipe("dynamic-all", mode=QuantMode.DYNAMIC, per_channel=False),
)


RECIPES_BY_NAME = {r.name: r for r in RECIPES}

# Retired recipes, with the line that refuses them. onnx-neural-compressor 1.0 picks an activation's calibration method
# from the node that produces the tensor, and only quantized nodes have one: our MatMuls' inputs come from LayerNorm,
# Gelu and Reshape nodes, so every one of them was calibrated MinMax (only the embedding table's scale moved under
# percentile). The graphs were `static-fp32-out` under another name (results/calibration-methods).
_NOT_APPLIED = ("neural-compressor calibrates every activation these graphs quantize with MinMax whatever the method "
                "named, so it built static-fp32-out under another name; use static-fp32-out")
RETIRED_RECIPES = {name: f"recipe {name} is retired: {_NOT_APPLIED}"
                   for name in ("static-fp32-out-pct", "static-fp32-out-entropy")}


# The ladder `quantize` climbs when no --recipe is named: every recipe for onnxruntime, the runtime it times them on.
LADDER: tuple[Recipe, ...] = tuple(r for r in RECIPES if r.engine is Engine.ONNXRUNTIME)


# What `--no-tune` takes when no recipe is named: static INT8 calibrated on SQuAD, whose answers do not depend on
# batch-mates; on the reference model it cost the least F1 under the worst protocol (results/static-int8).
DEFAULT_RECIPE = "static-fp32-out"


def recipes_for(names: Sequence[str], tune: bool) -> list[Recipe]:
    """The recipes a quantization tries: the named ones, else the ladder (tuning) or DEFAULT_RECIPE (no tuning)."""
    retired = [RETIRED_RECIPES[n] for n in names if n in RETIRED_RECIPES]
    if retired:
        raise QuantizationError(retired[0])
    unknown = [n for n in names if n not in RECIPES_BY_NAME]
    if unknown:
        raise QuantizationError(f"unknown recipe(s) {unknown}; choose from {list(RECIPES_BY_NAME)}")
    if names:
        return [RECIPES_BY_NAME[n] for n in names]
    return list(LADDER) if tune else [RECIPES_BY_NAME[DEFAULT_RECIPE]]


def calibration_reader(features: squad.Features, batch_size: int = 8, inputs: Sequence[str] | None = None,
                       keeps: Sequence[dict[str, np.ndarray]] = ()):
    """The one calibration reader: SQuAD windows in batches, rewindable, for INC and onnxruntime alike.

    `keeps` (a run-time configuration graph's menu as keep-count feeds): batch i runs under keeps[i % len], so the
    activation ranges cover every configuration the graph will run."""
    from onnx_neural_compressor.data_reader import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            wanted = set(inputs) if inputs else None
            self.batches = [
                {k: v for k, v in features.model_inputs(slice(lo, lo + batch_size)).items() if wanted is None or k in wanted}
                | (keeps[(lo // batch_size) % len(keeps)] if keeps else {})
                for lo in range(0, len(features), batch_size)
            ]
            self.position = 0

        def get_next(self):
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return self.batches[self.position - 1]

        def rewind(self) -> None:
            self.position = 0

        def __len__(self) -> int:
            return len(self.batches)

    return _Reader()


def select_nodes(manifest: manifests.Manifest, recipe: Recipe) -> list[str]:
    """Weight MatMuls the recipe quantizes, from the roles export recorded; unknown roles are an error."""
    if not manifest.roles:
        raise QuantizationError("the manifest records no node roles; re-export the graph with this qtool")
    unknown = [r for r in recipe.keep_fp32 if r not in manifest.roles]
    if unknown:
        raise QuantizationError(f"recipe {recipe.name} names role(s) {unknown} the graph does not have ({list(manifest.roles)})")
    empty = [r for r, names in manifest.roles.items() if not names]
    if empty:
        raise QuantizationError(f"role(s) {empty} match no node in the graph")
    return [n for role, names in manifest.roles.items() if role not in recipe.keep_fp32 for n in names]


def embedding_gathers(path: str | Path) -> list[str]:
    """The word-embedding Gather (the only big table), by the module name export gave it."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Gather" and "word_embeddings" in n.name]


def quantize_graph(fp32: str | Path, out: str | Path, recipe: Recipe, nodes: list[str], reader) -> dict[str, int]:
    """One INC quantization of `fp32` into `out` (a single self-contained file), then INT8_PASSES for an onnxruntime
    recipe; returns each pass's rewrite count (`passes.PassRun.rewrites`; none for an OpenVINO recipe)."""
    from onnx_neural_compressor.quantization import CalibrationMethod, QuantFormat, config, quantize

    op_types = ["MatMul"]
    if recipe.embeddings:
        gathers = embedding_gathers(fp32)
        if not gathers:
            raise QuantizationError(f"recipe {recipe.name} quantizes embeddings, but {fp32} has no word-embedding Gather")
        nodes = [*nodes, *gathers]
        op_types.append("Gather")
    if recipe.mode == QuantMode.DYNAMIC:
        quant_config = config.DynamicQuantConfig(
            op_types_to_quantize=op_types, nodes_to_quantize=nodes, per_channel=recipe.per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    else:
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "OpTypesToExcludeOutputQuantization": ["MatMul"]}
        method = {"minmax": CalibrationMethod.MinMax}[recipe.calibration]
        quant_config = config.StaticQuantConfig(
            calibration_data_reader=reader, calibrate_method=method, quant_format=QuantFormat[recipe.quant_format],
            op_types_to_quantize=op_types,
            nodes_to_quantize=nodes, per_channel=recipe.per_channel, calibration_sampling_size=len(reader),
            reduce_range=False,
            extra_options=extra,
        )
        reader.rewind()
    logging.getLogger("onnx_neural_compressor").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="qtool-inc-") as scratch:
        raw = Path(scratch) / "model.onnx"
        quantize(str(fp32), str(raw), quant_config)
        if not raw.is_file():
            raise QuantizationError(f"neural-compressor wrote no graph for recipe {recipe.name}")
        # INC may store weights as external data beside the graph; ship one self-contained file instead.
        model = onnx.load(str(raw), load_external_data=True)
        if recipe.engine is not Engine.ONNXRUNTIME:  # the passes write onnxruntime-only operators
            onnx.save(model, str(out))
            return {}
        done = run_passes(model, INT8_PASSES)
        onnx.save(done.model, str(out))
    return done.rewrites
