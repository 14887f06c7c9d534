"""The model a run starts from: the base loaded and checked, frozen layers, the frozen teacher, the windows."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..data import squad

from ..core.errors import InputError
from ..model.families import dims_of
from ..core.settings import Teacher
from ..core.settings import TrainSettings
from .args import check_sandwich_configs, resolve_base


def load_base(args: TrainSettings):
    """(model, tokenizer) of the base, seeded; refuses a model we cannot run token by token or a length past it."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from ..model.drop_and_restore import check_supported, quiet_transformers

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


def _check_missing_weights(args: TrainSettings, model, missing: list[str]) -> None:
    """A base may lack only its QA head (an encoder: the head starts random), and not at all under a frozen
    teacher, which would then teach the sub-models noise."""
    from ..model.families import family_of

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


def freeze(model, layers: int) -> None:
    """Stop learning below encoder layer `layers`: only the later layers and the QA head keep their gradients
    (the embeddings, and ELECTRA's projection, freeze with the first layers). Freezing every layer is refused."""
    from ..model.families import family_of

    family = family_of(model)
    encoder_layers = family.encoder_layers(model)
    if layers >= len(encoder_layers):
        raise InputError(f"--freeze-layers must be less than the model's {len(encoder_layers)} layers, got {layers}")
    if layers:
        model.requires_grad_(False)
        for module in (*encoder_layers[layers:], family.qa_head(model)):
            module.requires_grad_(True)


def frozen_teacher(args: TrainSettings, model):
    """A frozen, dropout-free copy of the base model for `teacher="frozen"`; None for inplace distillation."""
    if args.teacher != Teacher.FROZEN:
        return None

    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


def training_features(args: TrainSettings, tokenizer, num_layers: int) -> squad.Features:
    check_sandwich_configs(args, num_layers)  # a bad configuration fails before featurizing
    examples = squad.load_squad(args.train_file, limit=args.limit, neighbours=args.neighbours)
    return squad.featurize(examples, tokenizer, args.max_length,
                           args.doc_stride or squad.default_doc_stride(args.max_length),
                           pad_to_max_length=False, with_targets=True)
