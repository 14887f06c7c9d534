"""Each stage's settings as one typed object: the library functions take it, the CLI reads its defaults from it.

Torch-free, so `qtool --help` stays fast. A setting's default lives here once; the CLI options and the
functions below them never restate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtool_runtime.bounds import BOUNDS
from qtool_runtime.contract import ENGINES, LengthRule, Mode
from qtool_runtime.errors import QtoolError

from ..data import squad
from .runtime import PROTOCOLS


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
    seq_len: int = squad.MAX_LENGTH  # the length configurations are stated for (at most the model's positions)
    doc_stride: int | None = None  # window overlap; None: min(DOC_STRIDE, seq_len / 2)
    length_rule: str = LengthRule.CAP
    variant: str | None = None  # None: the variant `qtool train` recorded in the model folder
    opset: int = 18
    atol: float = 1e-3  # the largest logit difference ONNX vs PyTorch allowed
    # kept tokens may differ only where PyTorch ranked them this close (attention summed over heads and queries);
    # float32 sums differ between runtimes by about 1e-5 at 384 tokens
    tie_atol: float = 1e-3

    @property
    def window_stride(self) -> int:
        return squad.default_doc_stride(self.seq_len) if self.doc_stride is None else self.doc_stride


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


class Sampler(Mode):
    """How `qtool search` proposes configurations."""

    EVOLUTION = "evolution"  # LAT's evolutionary search (the better front in benchmarks/search_compare.py)
    NSGA2 = "nsga2"  # optuna's NSGA-II


@dataclass(frozen=True)
class SearchSettings:
    """What `qtool search` explores and how. A study records the settings that change what a trial measures
    (questions, slice, workloads, rule, length, space, cost), so resuming with other ones is refused."""

    trials: int = 40  # completed trials in the whole study, across workers and resumed runs
    questions: int = 300  # held-out SQuAD train questions scored per configuration (never dev)
    offset: int = 0  # shift the train slice back
    neighbours: int = squad.DOCUMENT_NEIGHBOURS  # > 0: score on documents too; 0: paragraphs only
    min_ratio: float | None = None  # smallest keep ratio per layer; None: what LengthDrop trained
    length_rule: str = LengthRule.CAP
    variant: str | None = None  # Drop-and-Restore variant searched; None: the one the model was trained with
    seq_len: int = squad.MAX_LENGTH
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
