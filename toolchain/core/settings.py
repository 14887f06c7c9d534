"""Each stage's settings as one typed object: the library functions take it, the CLI reads its defaults from it.

Torch-free, so `qtool --help` stays fast. A setting's default lives here once; the CLI options and the
functions below them never restate it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qtool_runtime.bounds import BOUNDS
from qtool_runtime.contract import ENGINES, Mode
from qtool_runtime.errors import QtoolError

from . import windows
from .errors import InputError
from .length import DEFAULT_LENGTH_RULE, DEFAULT_VARIANT, LENGTH_RULES, VARIANTS
from .windows import PROTOCOLS


class SettingsError(QtoolError, ValueError):
    """A stage setting out of its range."""


class Teacher(Mode):
    """Who teaches LengthDrop's sub-models in `qtool train`."""

    INPLACE = "inplace"  # LAT: the full model learns the span loss at every step and its own logits teach
    FROZEN = "frozen"  # a frozen copy of the base model teaches; only the sub-models learn (forward-only teacher)


class TorchReference(Mode):
    """Which PyTorch FP32 rows `verify` adds as references."""

    FULL = "full"  # the full model only
    ALL = "all"  # the full model and every FP32 qtool configuration found
    NONE = "none"  # no PyTorch rows (no model needed)


@dataclass(frozen=True)
class ExportSettings:
    """How `qtool export` builds and validates graphs."""

    squad_file: str = "dev"  # SQuAD windows the graph is validated on against PyTorch
    samples: int = 16  # questions used to validate each graph
    seq_len: int = windows.MAX_LENGTH  # the length configurations are stated for (at most the model's positions)
    doc_stride: int | None = None  # window overlap; None: min(DOC_STRIDE, seq_len / 2)
    variant: str | None = None  # None: the variant `qtool train` recorded in the model folder
    opset: int = 18
    atol: float = 1e-3  # the largest logit difference ONNX vs PyTorch allowed
    # kept tokens may differ only where PyTorch ranked them this close (attention summed over heads and queries);
    # float32 sums differ between runtimes by about 1e-5 at 384 tokens
    tie_atol: float = 1e-3

    @property
    def window_stride(self) -> int:
        return windows.default_doc_stride(self.seq_len) if self.doc_stride is None else self.doc_stride


@dataclass(frozen=True)
class VerifySettings:
    """What `qtool verify` (and `qtool bench` after it) scores and times."""

    squad_file: str = "dev"
    limit: int | None = None  # the first N questions (None: all of dev, minutes per graph)
    neighbours: int = 0  # > 0: the document workload (contexts widened by this many paragraphs each side)
    protocols: tuple[str, ...] = PROTOCOLS
    batch_sizes: tuple[int, ...] = (1, 32)  # the all-real seq_len latency protocol
    rounds: int = 8  # interleaved timing rounds after 2 warm-up
    workload_windows: int = 200  # windows in the real-workload latency protocol
    threads: int | None = None  # onnxruntime intra-op threads (None: all cores)
    engines: tuple[str, ...] = ()  # runtimes to run every ONNX artifact on besides its own (contract.Engine)
    torch_configs: str = TorchReference.FULL
    report_dir: str | Path | None = None  # None: the artifact root, never inside an artifact

    def check(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown or not self.protocols:
            raise SettingsError(f"protocols {list(self.protocols)}: choose from {PROTOCOLS}")
        if self.rounds < 1 or self.workload_windows < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise SettingsError("rounds, workload windows and batch sizes must be positive")
        if self.threads is not None:
            BOUNDS["threads"].check(self.threads)
        if any(e not in ENGINES for e in self.engines):
            raise SettingsError(f"engines {list(self.engines)}: choose from {ENGINES}")
        if self.torch_configs not in TorchReference.choices():
            raise SettingsError(f"torch_configs {self.torch_configs!r}: choose from {TorchReference.choices()}")


@dataclass(frozen=True)
class QuantizeSettings:
    """How `qtool quantize` (and `qtool bench`) builds an INT8 graph from an FP32 one."""

    calib: str = "squad"  # a shipped calibration set (toolchain/calibration) or a SQuAD JSON path
    samples: int = 128  # calibration windows for static recipes
    calib_neighbours: int = 0  # > 0: half the calibration windows from contexts widened by this many paragraphs
    tolerance: float = 1.0  # largest F1 drop against the FP32 graph a recipe may cost
    tune_questions: int = 1000  # held-out SQuAD train questions each recipe is scored on (never dev)
    recipes: tuple[str, ...] = ()  # recipe names to try; () = the whole ladder (quantize.recipes)
    tune: bool = True  # False: take the first recipe (default: static-fp32-out) without scoring or timing it
    timing_batches: tuple[int, int] = (1, 32)  # batch sizes the candidates are timed at, at seq_len


@dataclass(frozen=True)
class BenchSettings:
    """What `qtool bench` builds besides qtool's graphs, and how it quantizes them (it then verifies as VerifySettings say)."""

    quantize: QuantizeSettings = QuantizeSettings()
    standard: bool = True  # the peers from the same checkpoint: (b), and (c) where the openvino extra is installed
    plain_ort: bool = True  # onnxruntime's plain static INT8 of the full graph (ort-int8-full)


class Sampler(Mode):
    """How `qtool search` proposes configurations."""

    EVOLUTION = "evolution"  # LAT's evolutionary search (the better front in benchmarks/search_compare.py)
    NSGA2 = "nsga2"  # optuna's NSGA-II


@dataclass(frozen=True)
class SearchSettings:
    """What `qtool search` explores and how. A study records the settings that change what a trial measures
    (questions, slice, workloads, length, space, cost), so resuming with other ones is refused."""

    trials: int = 40  # completed trials in the whole study, across workers and resumed runs
    questions: int = 300  # held-out SQuAD train questions scored per configuration (never dev)
    offset: int = 0  # shift the train slice back
    neighbours: int = windows.DOCUMENT_NEIGHBOURS  # > 0: score on documents too; 0: paragraphs only
    min_ratio: float | None = None  # smallest keep ratio per layer; None: what LengthDrop trained
    variant: str | None = None  # Drop-and-Restore variant searched; None: the one the model was trained with
    seq_len: int = windows.MAX_LENGTH
    sampler: str = Sampler.EVOLUTION
    population: int = 12  # random trials before the sampler breeds
    storage: str | None = None  # optuna storage: journal file, sqlite:///FILE or an RDB URL
    study_name: str = "qtool-search"
    workers: int = 1  # local processes joining the study (needs storage)
    seed: int = 0
    latency_model: str | None = None  # a `qtool fit-latency` file; None: cost = MACs at real lengths
    start_from: tuple[str, ...] = ()  # configurations evaluated first, after the full model (a new study only)
    confirm_questions: int = 0  # > 0: re-score the front near the bar on this many other held-out train questions
    reference_graph: str | None = None  # an artifact (e.g. the standard recipe's graph): the recommendation bar is its F1
    route: bool = False  # each candidate routed as `qtool route` would (needs latency_model): full below its crossover


@dataclass(frozen=True)
class TrainSettings:
    """What `qtool train` does: LengthDrop's sandwich, the schedule, the data, the outputs (train.args checks them
    against the machine and the disk)."""

    base: str
    out: str
    train_file: str = "train"
    max_length: int = 256
    doc_stride: int | None = None  # window overlap; default min(128, max_length // 2)
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    epochs: float = 1.0
    max_steps: int | None = None
    time_budget: float | None = None  # seconds
    length_drop: bool = False
    num_sandwich: int = 2
    length_drop_ratio: float = 0.2
    layerdrop: float = 0.2
    bf16: bool | None = None  # None: bf16 autocast where the device computes bf16 natively (see native_bf16)
    device: str | None = None  # None: the CUDA GPU when one is present, else the CPU
    seed: int = 42
    limit: int | None = None
    save_every: float = 600.0  # seconds
    threads: int | None = None
    variant: str = DEFAULT_VARIANT  # Drop-and-Restore variant (length.VARIANTS); recorded in the model's config.json
    # How sandwich configurations meet each batch: 'cap' draws them for max_length and keeps min(k_i, tokens in),
    # which is what every graph does to an unpadded window; 'ratio' draws the counts for the batch's own width and
    # scales sandwich_configs to it (LAT's training).
    length_rule: str = DEFAULT_LENGTH_RULE
    # The document workload for training: each context widened with this many neighbouring paragraphs of its
    # article (squad.widen_contexts), so windows are full of real tokens and sub-models drop real tokens.
    neighbours: int = 0
    # LengthDrop restricted to the configurations you intend to ship (stated for max_length): every step distils
    # each of them from the full model instead of drawing a random sandwich.
    sandwich_configs: tuple[str, ...] = ()
    # Learning curves: every `snapshot_every` steps the model is written to snapshot_dir/step-N.
    snapshot_every: int | None = None
    snapshot_dir: str | None = None
    teacher: str = Teacher.INPLACE  # who teaches the sub-models (settings.Teacher)
    # The embeddings and the first `freeze_layers` encoder layers do not learn: no backward pass below them.
    freeze_layers: int = 0
    # Every dropout layer's probability during training; None keeps the base's own. 0 makes a run a function of its
    # data and seed alone (comparing one process with several: their dropout masks cannot be the same).
    dropout: float | None = None

    def validate(self) -> None:
        """Refuse numbers that would crash or silently misbehave hours into a run; messages name the CLI option."""
        def need(ok: bool, option: str, rule: str, value: object) -> None:
            if not ok:
                raise InputError(f"{option} must be {rule}, got {value!r}")

        need(self.max_length >= 32, "--max-length", "at least 32 tokens", self.max_length)
        need(self.variant in VARIANTS, "--variant", f"one of {VARIANTS}", self.variant)
        need(self.length_rule in LENGTH_RULES, "--length-rule", f"one of {LENGTH_RULES}", self.length_rule)
        if self.doc_stride is not None:
            need(0 < self.doc_stride < self.max_length, "doc_stride", f"between 1 and --max-length - 1 ({self.max_length - 1})",
                 self.doc_stride)
        need(self.batch_size >= 1, "--batch-size", "at least 1", self.batch_size)
        need(math.isfinite(self.lr) and self.lr > 0, "--lr", "a positive number", self.lr)
        need(0 <= self.warmup < 1, "warmup", "in [0, 1) (a share of the run)", self.warmup)
        need(self.weight_decay >= 0, "weight_decay", "0 or more", self.weight_decay)
        need(math.isfinite(self.epochs) and self.epochs > 0, "--epochs", "a positive number", self.epochs)
        if self.max_steps is not None:
            need(self.max_steps >= 1, "--max-steps", "at least 1", self.max_steps)
        if self.time_budget is not None:
            need(self.time_budget > 0, "--time-budget", "positive", self.time_budget)
        if self.limit is not None:
            need(self.limit >= 1, "--limit", "at least 1 question", self.limit)
        need(self.num_sandwich >= 0, "--num-sandwich", "0 or more", self.num_sandwich)
        need(0 <= self.length_drop_ratio < 1, "--length-drop-ratio", "in [0, 1)", self.length_drop_ratio)
        need(0 <= self.layerdrop < 1, "--layerdrop", "in [0, 1)", self.layerdrop)
        need(self.save_every >= 0, "save_every", "0 or more seconds", self.save_every)
        if self.threads is not None:
            BOUNDS["threads"].check(self.threads)  # the kit's bounds table: 1..the cores this process may use
        need(self.device in (None, "cpu", "cuda") or str(self.device).startswith("cuda:"), "--device",
             "cpu, cuda or cuda:N", self.device)
        need(self.neighbours >= 0, "--neighbours", "0 or more paragraphs", self.neighbours)
        need(not self.sandwich_configs or self.length_drop, "--sandwich-config", "used with --length-drop",
             self.sandwich_configs)
        if self.snapshot_every is not None:
            need(self.snapshot_every >= 1, "--snapshot-every", "at least 1 step", self.snapshot_every)
            need(self.snapshot_dir is not None, "--snapshot-dir", "given with --snapshot-every", self.snapshot_dir)
        need(self.teacher in Teacher.choices(), "--teacher", f"one of {Teacher.choices()}", self.teacher)
        need(self.teacher == Teacher.INPLACE or self.length_drop, "--teacher frozen", "used with --length-drop "
             "(it teaches the sub-models)", self.teacher)
        need(self.freeze_layers >= 0, "--freeze-layers", "0 or more", self.freeze_layers)
        if self.dropout is not None:
            need(0 <= self.dropout < 1, "--dropout", "in [0, 1)", self.dropout)
