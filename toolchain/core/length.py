"""Length configurations: how many tokens each Drop-and-Restore layer keeps, and the rule for other lengths.

Torch-free, so the deployment runtime and manifests can read configurations without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from qtool_runtime.contract import LENGTH_RULES, VARIANTS, LengthRule, Variant, full_up_to_problem, retired_problem
from qtool_runtime.errors import QtoolError


class LengthConfigError(QtoolError, ValueError):
    """A length configuration that cannot drive this model."""


SKIP = "skip"  # a layer the configuration leaves out entirely (LayerDrop, LAT's layer configurations, pruned layers)
# How dropped tokens are ranked and restored. `qtool`: significance sums attention over real queries only, and a
# dropped token keeps its post-attention state from the layer that dropped it. `lat` (Kim & Cho's code, Intel's
# Dynamic-TinyBERT): significance sums over all queries, [CLS] is always kept, and a dropped token keeps the
# output of the last layer that kept it. `match`: the question segment ([CLS] question [SEP], the tokens of token
# type 0) is always kept, so every layer still reads the question; then the context tokens within MATCH_WIDTH tokens
# of a word of the question (a token the question holds and the window's context repeats at most MATCH_MAX_REPEATS
# times) rank above the rest of the context; attention ranks within each group (families without token_type_ids
# refuse it). On full document windows the attention ranking alone drops the
# answer's neighbourhood early; the question's own words in the context say where it is likely to be.
DEFAULT_VARIANT = Variant.QTOOL
DEFAULT_LENGTH_RULE = LengthRule.CAP
CAP_RULE_DOC = "k_i(L) = min(k_i, n_in): unpadded inputs keep what padded-to-seq_len inputs keep (padding ranks last)"


@dataclass(frozen=True)
class LengthConfig:
    """How many tokens each layer keeps, stated for inputs of `seq_len` tokens, and the rule for other lengths.

    `cap`, the one rule graphs run: layer i keeps min(k_i, tokens that arrive). Padding always ranks last, so an
    unpadded window keeps exactly the real tokens it would keep padded to `seq_len`: one graph, the same answers
    padded or not. (`ratio`, LAT's scaling, is retired for graphs; LengthDrop may still train with it, by scaling
    each batch's configurations to its width: train.lengthdrop.)
    """

    keep: tuple[int | None, ...]  # None: the layer is skipped
    seq_len: int = 384
    rule: LengthRule = DEFAULT_LENGTH_RULE  # always cap once validated; kept because manifests and reports state it
    variant: Variant = DEFAULT_VARIANT
    # a routed graph (toolchain.graph.route): a batch whose longest window has at most this many real tokens runs every
    # layer on every token; 0: the configuration applies to every window
    full_up_to: int = 0

    def __post_init__(self) -> None:
        # modes arrive as CLI and JSON strings; unknown ones stay as given for validate() to refuse with one line
        if self.rule in LENGTH_RULES:
            object.__setattr__(self, "rule", LengthRule(self.rule))
        if self.variant in VARIANTS:
            object.__setattr__(self, "variant", Variant(self.variant))
        if self.rule == LengthRule.RATIO and self.is_full:  # every rule keeps every token: the same configuration
            object.__setattr__(self, "rule", LengthRule.CAP)

    @classmethod
    def parse(
        cls, text: str | Sequence[int | None], num_layers: int, seq_len: int = 384, rule: str = DEFAULT_LENGTH_RULE,
        variant: str = DEFAULT_VARIANT,
    ) -> "LengthConfig":
        """Read 'full', '315,251,skip,159,...' (or a sequence of ints and None) for a model of `num_layers` layers."""
        if isinstance(text, str) and text.strip() == "full":
            keep: tuple[int | None, ...] = (seq_len,) * num_layers
        elif isinstance(text, str):
            parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
            try:
                keep = tuple(None if p.lower() == SKIP else int(p) for p in parts)
            except ValueError as exc:
                raise LengthConfigError(
                    f"length configuration {text!r} must be comma-separated integers or '{SKIP}'") from exc
        else:
            keep = tuple(None if k is None else int(k) for k in text)
        config = cls(keep=keep, seq_len=seq_len, rule=rule, variant=variant)
        config.validate(num_layers)
        return config

    @classmethod
    def full(cls, num_layers: int, seq_len: int = 384, rule: str = DEFAULT_LENGTH_RULE,
             variant: str = DEFAULT_VARIANT) -> "LengthConfig":
        return cls(keep=(seq_len,) * num_layers, seq_len=seq_len, rule=rule, variant=variant)

    def validate(self, num_layers: int) -> None:
        if self.rule not in LENGTH_RULES:
            raise LengthConfigError(f"length rule {self.rule!r} is unknown; choose one of {LENGTH_RULES}")
        retired = retired_problem(self.rule, self.variant, not self.is_full)
        if retired:
            raise LengthConfigError(retired)
        if self.variant not in VARIANTS:
            raise LengthConfigError(f"Drop-and-Restore variant {self.variant!r} is unknown; choose one of {VARIANTS}")
        if self.seq_len < 1:
            raise LengthConfigError(f"sequence length must be positive, got {self.seq_len}")
        if len(self.keep) != num_layers:
            raise LengthConfigError(
                f"length configuration {self} has {len(self.keep)} values; the model has {num_layers} layers"
            )
        routed = full_up_to_problem(self.full_up_to, self.keep, self.seq_len, self.rule, self.variant)
        if routed is not None:
            raise LengthConfigError(routed)
        if all(k is None for k in self.keep):
            raise LengthConfigError(f"length configuration {self} skips every layer")
        previous = None
        for i, k in enumerate(self.keep):
            if k is None:
                continue
            if k < 1:
                raise LengthConfigError(f"layer {i} keeps {k} tokens; every layer must keep at least 1")
            if k > self.seq_len:
                raise LengthConfigError(
                    f"layer {i} keeps {k} tokens, more than the sequence length {self.seq_len}"
                )
            if previous is not None and k > previous:
                raise LengthConfigError(
                    f"length configuration {self} increases at layer {i} ({previous} -> {k}); "
                    "dropped tokens cannot come back"
                )
            previous = k

    @property
    def is_full(self) -> bool:
        """Every layer runs on every token: the plain model."""
        return all(k == self.seq_len for k in self.keep)

    @property
    def skipped(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.keep) if k is None)

    def keep_count(self, layer: int, seq_len: int, n_in: int) -> int:
        """Tokens layer `layer` keeps of `n_in` arriving, for an input of `seq_len` tokens (ints or symbolic ints).

        A skipped layer passes every token on."""
        if self.keep[layer] is None:
            return n_in
        return _sym_min(n_in, self.keep[layer])

    def __str__(self) -> str:
        return ",".join(SKIP if k is None else str(k) for k in self.keep)

    @property
    def label(self) -> str:
        """'full', '315,251,...' or '315,251,... (full up to 256)': how reports and the CLI show a configuration."""
        return "full" if self.is_full else str(self) + (f" (full up to {self.full_up_to})" if self.full_up_to else "")

    def for_window(self, real_tokens: int) -> "LengthConfig":
        """The configuration a batch whose longest window has `real_tokens` tokens runs (a routed one's full
        configuration at or below its threshold)."""
        if self.full_up_to and real_tokens <= self.full_up_to:
            return LengthConfig.full(len(self.keep), self.seq_len, variant=self.variant)
        return self

    def name(self) -> str:
        """A folder-safe name: 'full', '315-251-...', or '315-251-...-match' (two variants must not share a folder)."""
        if self.is_full:
            return "full"
        return (str(self).replace(",", "-")
                + ("" if self.variant == DEFAULT_VARIANT else f"-{self.variant}")
                + (f"-full{self.full_up_to}" if self.full_up_to else ""))

    def to_dict(self) -> dict:
        data = {"keep": list(self.keep), "seq_len": self.seq_len, "rule": LengthRule.CAP, "rule_text": CAP_RULE_DOC,
                "variant": self.variant}
        return data | ({"full_up_to": self.full_up_to} if self.full_up_to else {})

    @classmethod
    def from_dict(cls, data: dict) -> "LengthConfig":
        """Inverse of to_dict (null = a skipped layer); manifests written before the rule existed used `ratio`, now
        retired (refused unless the configuration is full)."""
        # full_up_to as written: validate() refuses "224", 224.5 or true, as the kit does (contract.full_up_to_problem)
        config = cls(tuple(None if k is None else int(k) for k in data["keep"]), int(data["seq_len"]),
                     data.get("rule", LengthRule.RATIO), data.get("variant", DEFAULT_VARIANT), data.get("full_up_to", 0))
        config.validate(len(config.keep))
        return config


def _sym_min(a, b):
    """min() that also works on torch's symbolic sizes during export (torch imported only then)."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    import torch

    return torch.sym_min(a, b)
