"""One surface for every inference runtime: onnxruntime's `run(names, feed)`, `get_inputs()`, `get_outputs()`.

The toolchain validates, scores and times graphs through this surface and the kit answers through it, so which
runtime runs a graph is a setting (`contract.Engine`), never a second code path. onnxruntime is the default;
OpenVINO Runtime is the optional extra (`pip install 'qtool[openvino]'`); it reads ONNX graphs and its own IR.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bounds
from .contract import Engine, FloatPrecision, float_precision_of
from .errors import ArtifactError

IR_SUFFIX = ".xml"  # an OpenVINO IR graph (weights in the .bin beside it); OpenVINO alone runs it


@dataclass(frozen=True)
class Port:
    """An input or output as onnxruntime's sessions describe it (the name is all the toolchain reads)."""

    name: str


class OpenVinoSession:
    """An OpenVINO compiled model behind onnxruntime's session surface: one infer request, run synchronously."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [Port(p.get_any_name()) for p in compiled.inputs]
        self._outputs = [Port(p.get_any_name()) for p in compiled.outputs]
        self._input_names = frozenset(p.name for p in self._inputs)
        self._output_index = {p.name: i for i, p in enumerate(self._outputs)}  # results come in output order

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        values = tuple(self._request.infer({k: v for k, v in feed.items() if k in self._input_names}).values())
        if names is None:
            return [np.asarray(v) for v in values]
        return [np.asarray(values[self._output_index[name]]) for name in names]


def engine_of(name: str | Engine) -> Engine:
    """The Engine named `name`; an unknown name is one line listing the known ones."""
    try:
        return Engine(str(name))
    except ValueError:
        raise ArtifactError(f"unknown runtime {name!r}; known: {', '.join(Engine.choices())}") from None


def available(engine: Engine) -> bool:
    """Whether `engine` is installed here (OpenVINO is an optional extra)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime" if engine is Engine.ONNXRUNTIME else "openvino") is not None


def runs_exactly(kind: str, float_precision: str | None = None) -> bool:
    """Whether an artifact (its manifest's `kind` and `float_precision`) computes in FP32 where its graph says FP32
    (`exact`). qtool's graphs do unless their manifest says otherwise: they rank tokens, which bf16 may reorder, so a
    graph takes the runtime's default only where it was measured so (contract.FloatPrecision)."""
    return float_precision_of(kind, float_precision) is FloatPrecision.FP32


def openvino_session(path: Path, threads: int | None = None, *, exact: bool = True,
                     error: type[Exception] = ArtifactError) -> OpenVinoSession:
    """An OpenVINO CPU session tuned for latency (one stream). `exact`: compute in FP32 where the graph says FP32.
    OpenVINO's default on CPUs with AMX or AVX-512 BF16 is bf16, which moves the logits a Drop-and-Restore graph ranks
    tokens by; a graph takes it only where its manifest says so (runs_exactly), as the peers and `static-openvino`
    graphs do."""
    try:
        import openvino as ov
    except ImportError:
        raise error("OpenVINO is not installed: pip install 'qtool[openvino]' (or 'qtool-runtime[openvino]')") from None
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if bounds.check("threads", threads):
        config["INFERENCE_NUM_THREADS"] = threads
    if exact:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    try:
        core = ov.Core()
        with _signal_stack_kept():
            return OpenVinoSession(core.compile_model(core.read_model(str(path)), "CPU", config))
    except Exception as exc:  # OpenVINO raises RuntimeError and its own types with multi-line texts
        raise error(f"{path} does not compile on OpenVINO: {_openvino_reason(exc)}") from exc


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextmanager
def _signal_stack_kept():
    """Restore the thread's alternate signal stack after OpenVINO compiles a model. OpenVINO 2026.4's CPU plugin
    installs its own (about 20 KB) while compiling some graphs and leaves it in place after its memory is gone: the next
    signal the thread handles (SIGTERM from `kill`, which qtool turns into a clean exit) then kills the process with
    SIGSEGV. Linux and macOS (POSIX sigaltstack); a no-op where libc cannot be loaded."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        saved = _SignalStack()
        if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
            libc = None
    except (OSError, AttributeError):
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            if saved.ss_flags & 2:  # SS_DISABLE: there was none; disabling needs a valid size on some libcs
                saved.ss_size = 0
            libc.sigaltstack(ctypes.byref(saved), None)


def _openvino_reason(exc: Exception) -> str:
    """The lines of an OpenVINO exception that say what failed (its first lines name only C++ source files)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("No conversion rule", "Conversion is failed"))]
    plain = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return "; ".join(said) or (plain[0] if plain else type(exc).__name__)


def ort_session(path: Path, threads: int | None = None, error: type[Exception] = ArtifactError):
    """An onnxruntime CPU session with full graph optimisation, as the toolchain validated and timed the graph
    (the toolchain opens its sessions here too); a graph onnxruntime cannot load raises `error`, one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if bounds.check("threads", threads):
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise error(f"{path} is not a loadable ONNX graph: {exc}") from exc


def open_session(path: Path, engine: Engine = Engine.ONNXRUNTIME, threads: int | None = None, *, exact: bool = True,
                 error: type[Exception] = ArtifactError):
    """`path` on `engine`; an OpenVINO IR (.xml) only opens on OpenVINO."""
    if engine is Engine.OPENVINO:
        return openvino_session(path, threads, exact=exact, error=error)
    if Path(path).suffix == IR_SUFFIX:
        raise error(f"{path} is an OpenVINO IR: it runs on OpenVINO, not onnxruntime")
    return ort_session(path, threads, error)
