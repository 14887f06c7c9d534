"""The standard recipe: what a deployment team gets without qtool, built from the same checkpoint.

(export) the plain model exported the standard way, by optimum's ONNX exporter;
(a) onnxruntime's transformer fusions on it (`optimum-cli onnxruntime optimize -O2`: fused Attention,
    SkipLayerNormalization, BiasGelu), FP32;
(b) (a) + dynamic INT8 with onnxruntime's `quantize_dynamic` (the avx512_vnni recipe: S8 per-tensor
    weights, U8 activations, no reduced range; the fused Attention becomes QAttention);
(c) the export quantized by NNCF (`nncf.quantize`, ModelType.TRANSFORMER, mixed preset: SmoothQuant, static
    INT8, fast bias correction), calibrated on the same SQuAD train windows as qtool's static recipes, run on
    OpenVINO Runtime: Intel's stack, the peer a team on an Intel CPU would try. Needs the `openvino` extra.
    NNCF quantizes the ONNX graph (its ONNX backend writes standard QDQ), not an OpenVINO IR: on OpenVINO the two
    run at the same speed and F1 (results/openvino-peer), and one graph format keeps one artifact contract.
Every speed claim qtool makes is measured against the faster of (b) and (c), side by side in one process.

Each graph is written as an artifact folder of kind `standard`, so verify and bench time and score it
exactly like qtool's own graphs.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

from qtool_runtime.contract import Engine, Precision, QuantMode
from qtool_runtime.engines import available
from qtool_runtime.errors import QtoolError

from ..artifact import artifact, output
from ..data import squad
from ..artifact import manifest as manifests
from ..model.families import dims_of
from ..core.length import LengthConfig
from ..artifact.output import OutputKind, RootKind, Target
from .peers import OPENVINO_INT8, STANDARD_FP32, STANDARD_FUSED, STANDARD_INT8
from ..artifact.interface import GraphInterface
from ..graph.runtime import onnx_session
from ..data.calibration_windows import calibration_features

NAMES = {"export": STANDARD_FP32, "fused": STANDARD_FUSED, "int8": STANDARD_INT8}
# half of (c)'s calibration windows widened by neighbouring paragraphs; from the shipped set, which holds one paragraph
# of most articles, they are mostly single paragraphs still (201 real tokens on average against 159)
NNCF_CALIB_NEIGHBOURS = 2
NNCF_CALIB_SAMPLES = 300  # the whole shipped calibration set


class StandardRecipeError(QtoolError, RuntimeError):
    """A step of the standard recipe failed."""


def _write(graph: Path, tokenizer_dir: Path, dest: Path, *, precision: str, recipe: dict, config, source: Path,
           engine: Engine = Engine.ONNXRUNTIME) -> Path:
    """Wrap one standard-recipe graph into an artifact folder (interface read off the graph)."""
    import onnx

    session = onnx_session(graph, engine=engine)
    interface = GraphInterface.of_session(session)
    seq_len = squad.MAX_LENGTH
    dims = dims_of(config)
    with artifact.staging(dest, OutputKind.STANDARD_ARTIFACT) as tmp:
        shutil.copyfile(graph, tmp / artifact.GRAPH)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, tmp / name)
        manifests.write(tmp, manifests.Manifest(
            graph=artifact.GRAPH, precision=precision, kind="standard",
            length_config=LengthConfig.full(dims.layers, seq_len),
            interface=interface, opset=artifact.opset_of(onnx.load(str(graph), load_external_data=False)),
            max_positions=int(dims.max_positions),
            doc_stride=squad.default_doc_stride(seq_len), max_answer_length=squad.MAX_ANSWER_LENGTH,
            source_model=str(source), model_type=config.model_type,
            flops_ratio=1.0, quantization=recipe if precision == Precision.INT8 else None,
            validation={"against": "optimum exporter's own validation"} | recipe if precision == Precision.FP32 else None,
            engine=str(engine),
        ))
    return dest


def openvino_installed() -> bool:
    """Whether (c) can be built here: OpenVINO and NNCF (the openvino extra)."""
    return available(Engine.OPENVINO) and importlib.util.find_spec("nncf") is not None


def standard_targets(out: str | Path, openvino: bool = False) -> list[Target]:
    """The artifact folders the standard recipe writes into `out` ((c) too with `openvino`)."""
    names = [*NAMES.values(), *([OPENVINO_INT8] if openvino else [])]
    return [Target(Path(out) / name, OutputKind.STANDARD_ARTIFACT) for name in names]


def build_standard(model_dir: str | Path, out: str | Path, *, openvino: bool | None = None,
                   calib: str = "squad", calib_samples: int = NNCF_CALIB_SAMPLES, log=print) -> list[Path]:
    """Build (export), (a), (b) and, with `openvino` (default: when OpenVINO and NNCF are installed), (c) from
    `model_dir` into out/std-*/; returns the artifact folders."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig
    from transformers import AutoConfig

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json)")
    installed = openvino_installed()
    if openvino and not installed:
        raise StandardRecipeError("the OpenVINO recipe needs OpenVINO and NNCF: pip install 'qtool[openvino]'")
    openvino = installed if openvino is None else openvino
    output.check_root(out, RootKind.ARTIFACTS, standard_targets(out, openvino), inputs=(("--model", model_dir),))
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    logging.getLogger("optimum").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="qtool-std-") as work, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(work)
        try:
            main_export(str(model_dir), work / "export", task="question-answering", local_files_only=True)
        except Exception as exc:  # optimum raises many types; the message is what helps
            raise StandardRecipeError(f"optimum could not export {model_dir}: {exc}") from exc
        exported = work / "export" / "model.onnx"
        # (a) `optimum-cli onnxruntime optimize -O2`: onnxruntime's BERT fusions through optimum
        ORTOptimizer.from_pretrained(work / "export").optimize(AutoOptimizationConfig.O2(), save_dir=work / "o2")
        fused_path = work / "o2" / "model_optimized.onnx"
        ops = {n.op_type for n in onnx.load(str(fused_path), load_external_data=False).graph.node}
        if "Attention" not in ops:
            raise StandardRecipeError(f"onnxruntime fused no Attention in {exported} (ops: {sorted(ops)})")
        # (b) dynamic INT8 after the fusions (the avx512_vnni settings)
        int8_path = work / "int8.onnx"
        quantize_dynamic(str(fused_path), str(int8_path), per_channel=False, reduce_range=False,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        folders = [
            _write(exported, work / "export", out / NAMES["export"], precision="fp32", config=config, source=model_dir,
                   recipe={"tool": "optimum.exporters.onnx.main_export", "description": "plain model, optimum ONNX export"}),
            _write(fused_path, work / "export", out / NAMES["fused"], precision="fp32", config=config, source=model_dir,
                   recipe={"tool": "optimum ORTOptimizer, AutoOptimizationConfig.O2 (onnxruntime BERT fusions)",
                           "description": "fused Attention, SkipLayerNormalization, BiasGelu"}),
            _write(int8_path, work / "export", out / NAMES["int8"], precision="int8", config=config, source=model_dir,
                   recipe={"tool": "onnxruntime.quantization.quantize_dynamic", "mode": QuantMode.DYNAMIC,
                           "recipe": {"name": "avx512_vnni dynamic"},
                           "description": "fusions + dynamic INT8 (S8 per-tensor weights, U8 activations, QAttention)"}),
        ]
        if openvino:
            folders.append(_build_openvino_peer(exported, work, out / OPENVINO_INT8, config=config, source=model_dir,
                                               calib=calib, samples=calib_samples))
    for folder in folders:
        log(f"wrote {folder}")
    return folders


def nncf_static_int8(graph: Path, tokenizer, *, seq_len: int, doc_stride: int, calib: str,
                     samples: int) -> tuple[object, dict]:
    """(c)'s quantizer: NNCF's static INT8 (TRANSFORMER model type, mixed preset) of an ONNX graph, calibrated on
    SQuAD train windows (half of them documents). Returns the quantized onnx.ModelProto and the manifest's
    quantization record. The peer applies it to the plain export; benchmarks apply it to qtool's Drop-and-Restore graphs to compare
    quantizers on the same graph."""
    import nncf
    import onnx

    windows = calibration_features(calib, samples, tokenizer, seq_len, doc_stride, neighbours=NNCF_CALIB_NEIGHBOURS)
    items = [windows.model_inputs(slice(i, i + 1)) for i in range(len(windows))]
    nncf.set_log_level(logging.ERROR)
    try:
        quantized = nncf.quantize(onnx.load(str(graph)), nncf.Dataset(items), subset_size=len(items),
                                  model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
    except Exception as exc:  # NNCF raises many types; the message is what helps
        raise StandardRecipeError(f"NNCF could not quantize {graph}: {exc}") from exc
    return quantized, {"tool": f"nncf.quantize {nncf.__version__} (ONNX backend)", "mode": QuantMode.STATIC,
                       "recipe": {"name": "nncf transformer mixed", "model_type": "TRANSFORMER", "preset": "MIXED"},
                       "calibration": {"set": calib, "windows": len(items), "neighbours": NNCF_CALIB_NEIGHBOURS}}


def _build_openvino_peer(exported: Path, work: Path, dest: Path, *, config, source: Path, calib: str,
                         samples: int) -> Path:
    """(c): NNCF's static INT8 of the plain export, calibrated on SQuAD train windows, for OpenVINO Runtime."""
    import onnx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "export", local_files_only=True)
    seq_len = squad.MAX_LENGTH
    quantized, recipe = nncf_static_int8(exported, tokenizer, seq_len=seq_len,
                                         doc_stride=squad.default_doc_stride(seq_len), calib=calib, samples=samples)
    graph = work / "nncf-int8.onnx"
    onnx.save(quantized, str(graph))
    return _write(graph, work / "export", dest, precision="int8", config=config, source=source,
                  engine=Engine.OPENVINO,
                  recipe={**recipe,
                          "description": "SmoothQuant + static INT8 QDQ + fast bias correction, run on OpenVINO"})
