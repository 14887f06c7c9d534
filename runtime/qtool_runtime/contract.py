"""The artifact contract, torch-free: what an artifact folder holds and what its manifest may say.

Both sides import it: the toolchain writes manifests that pass `check_fields`, and the kit refuses any that do
not. Constants name the folder's files, the graph's interface and the bounds; `feeding` is the one rule for
how a graph may be fed (batched, padded).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

from .errors import ConfigError, shown

if TYPE_CHECKING:
    import numpy as np


class Mode(str, Enum):
    """A mode that is its own JSON and CLI string: compare against members, never against literals."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class LengthRule(Mode):
    """How keep counts stated for seq_len meet a batch of width L. Graphs run `cap` only; `ratio` is a training
    option (LengthDrop draws each batch's counts for its own width, as LAT's code does)."""

    CAP = "cap"  # k_i(L) = min(k_i, n_in): an unpadded window keeps what it would keep padded
    RATIO = "ratio"  # k_i(L) = ceil(k_i * L / seq_len), LAT's scaling: only right for inputs padded to seq_len


# Retired for graphs: `ratio` kept the same tokens as `cap` on windows padded to seq_len and fewer (27 F1 less) on
# unpadded ones. A manifest that drops tokens under it is refused with this line; a full graph drops nothing and runs.
RATIO_RETIRED = ("length rule 'ratio' is retired for graphs: it matches 'cap' on padded windows and loses F1 on "
                 "unpadded ones; re-export the configuration with qtool export (cap)")


class Variant(Mode):
    """How dropped tokens are ranked and restored (toolchain.core.length documents them)."""

    QTOOL = "qtool"  # significance over real queries; a dropped token keeps its post-attention state
    LAT = "lat"  # LAT's code: significance over all queries (padding included), [CLS] always kept
    # the question segment ([CLS] question [SEP]) first, then context tokens near a word of the question, then the rest
    MATCH = "match"
    # as `match`, but the rest ranks by the QA head's answer score of the layer's attention output (the higher of a
    # token's start and end logits) instead of the attention it receives
    ANSWER = "answer"

    @property
    def sees_padding(self) -> bool:
        return self is Variant.LAT

    @property
    def keeps_question(self) -> bool:
        """Whether the question segment (found by its token type) always ranks first."""
        return self in (Variant.MATCH, Variant.ANSWER)

    @property
    def favours_question_words(self) -> bool:
        """Whether context tokens near a word of the question rank next, before the rest."""
        return self in (Variant.MATCH, Variant.ANSWER)

    @property
    def ranks_by_answer_score(self) -> bool:
        """Whether the rest rank by the QA head's answer score rather than by the attention they receive."""
        return self is Variant.ANSWER


# Retired variants, with the line that refuses them. `question` (the question segment first, then qtool's ranking)
# lost to `match` at every configuration and on every overlap third of held-out train documents (results/question-vs-match).
RETIRED_VARIANTS = {"question": "variant 'question' is retired: 'match' keeps the question too and beat it at every "
                                "configuration on held-out documents; re-export or retrain with --variant match"}


class QuantMode(Mode):
    STATIC = "static"  # activation scales fixed by calibration
    DYNAMIC = "dynamic"  # activation scales computed per run, so per batch

    @property
    def per_batch_scales(self) -> bool:
        """Whether a window's answer depends on its batch-mates (such a graph must not batch requests)."""
        return self is QuantMode.DYNAMIC


class Precision(Mode):
    FP32 = "fp32"
    INT8 = "int8"


class Engine(Mode):
    """The inference runtime a graph runs on. ONNX graphs run on both; an OpenVINO IR (model.xml) only on OpenVINO."""

    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"  # the optional extra: pip install 'qtool[openvino]' (or qtool-runtime[openvino])


ENGINES = Engine.choices()


QTOOL_KIND = "qtool"  # a manifest's kind for qtool's own graphs (the default of a manifest without one)


class FloatPrecision(Mode):
    """How the runtime computes the operations a graph states in FP32 (a manifest's `float_precision`)."""

    FP32 = "fp32"  # as stated: the rankings see the logits the FP32 graph was validated with
    # the runtime's choice for the CPU: OpenVINO takes bf16 where the CPU has AVX-512 BF16 or AMX, FP32 elsewhere;
    # onnxruntime's CPU kernels compute FP32 either way
    RUNTIME_DEFAULT = "runtime-default"


FLOAT_PRECISIONS = FloatPrecision.choices()


def float_precision_of(kind: str = QTOOL_KIND, stated: str | None = None) -> FloatPrecision:
    """A manifest's `float_precision` (`stated`); without one, qtool's graphs compute in FP32 as stated and a peer's
    (kind 'standard') with the runtime's defaults, as a team would run it."""
    if stated is not None:
        return FloatPrecision(stated)
    return FloatPrecision.FP32 if kind == QTOOL_KIND else FloatPrecision.RUNTIME_DEFAULT


MANIFEST = "manifest.json"
FORMAT = "qtool-artifact/1"
# A routed graph's manifest (length_config.full_up_to): a kit that does not know the threshold would batch windows
# across it and answers would depend on batch-mates, so such kits must refuse it as an unknown format.
ROUTED_FORMAT = "qtool-artifact/2"
TOKENIZER = "tokenizer.json"
# A reduced INT8 graph runs its ranking layers' attention as ONNX Attention (opset 24) with `nonpad_kv_seqlen`.
# onnxruntime reads that input from 1.25 on; 1.24 runs the node but ignores it and answers wrong without an error,
# so a graph stamped with ATTENTION_OPSET or later needs ATTENTION_ONNXRUNTIME or later.
ATTENTION_OPSET = 24
ATTENTION_ONNXRUNTIME = (1, 25)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The run-time configuration graph's extra input: int64 [layers], how many tokens each layer keeps (cap rule:
# layer i keeps min(keep_counts[i], tokens that arrive); a skipped layer's value is ignored).
KEEP_INPUT = "keep_counts"
SPAN_OUTPUTS = ("start_logits", "end_logits")
PRECISIONS = Precision.choices()
LENGTH_RULES = LengthRule.choices()
VARIANTS = Variant.choices()
FEEDING_KEYS = ("batchable", "pad_to_seq_len")
# No position table, window or answer is longer: manifest numbers beyond it are corrupt, not large models.
MAX_TOKENS = 1 << 16
FULL = "full"  # a configuration request for the full configuration (a run-time graph's first menu entry)
SKIP = "skip"  # a skipped layer in a configuration request
_COUNT = re.compile(r"[0-9]+")  # a keep count as text: ASCII digits only (int() also takes '٣', '1_0', '+5')


@dataclass(frozen=True)
class MenuEntry:
    """One configuration a run-time configuration graph is meant to run, with what it was measured to give.

    `keep` has one count per layer (None at a layer the graph skips); `f1` maps a workload ("paragraphs",
    "documents") to F1 on held-out SQuAD train; `ms` is milliseconds per full window at batch 1 where measured.
    """

    keep: tuple[int | None, ...]
    f1: dict[str, float] = field(default_factory=dict)
    ms: float | None = None
    macs_ratio: float | None = None

    @property
    def label(self) -> str:
        return config_label(self.keep)

    @property
    def mean_f1(self) -> float | None:
        return sum(self.f1.values()) / len(self.f1) if self.f1 else None

    def feed(self, seq_len: int) -> "np.ndarray":
        """The graph's `keep_counts` input (a skipped layer gets seq_len; the graph ignores it)."""
        import numpy as np

        return np.array([seq_len if k is None else k for k in self.keep], dtype=np.int64)

    def to_dict(self) -> dict:
        return {"keep": list(self.keep), "label": self.label, "f1": dict(self.f1), "ms": self.ms,
                "macs_ratio": self.macs_ratio}

    @classmethod
    def from_dict(cls, data: dict) -> "MenuEntry":
        return cls(tuple(data["keep"]), dict(data.get("f1") or {}), data.get("ms"), data.get("macs_ratio"))


def check_keep(keep: object, layout: list, seq_len: int) -> str | None:
    """Why `keep` cannot drive a run-time graph whose full configuration is `layout` (None: it can).

    One count per layer, None exactly at the layers the graph skips, counts in 1..seq_len, never increasing."""
    if not isinstance(keep, (list, tuple)) or len(keep) != len(layout):
        return f"a configuration needs {len(layout)} keep counts, got {keep!r}"
    if any((k is None) != (s is None) for k, s in zip(keep, layout)):
        return f"configuration {list(keep)} must skip exactly the layers the graph skips ({list(layout)})"
    counts = [k for k in keep if k is not None]
    if not all(bounded_int(k) and k <= seq_len for k in counts):
        return f"keep counts must be integers in 1..{seq_len}, got {list(keep)}"
    if any(a < b for a, b in zip(counts, counts[1:])):
        return f"configuration {list(keep)} increases; dropped tokens cannot come back"
    return None


def parse_config(request: object, layers: int, seq_len: int) -> tuple[int | None, ...] | None:
    """A configuration request as keep counts (None at a skipped layer), or None for no request or 'full'.

    The one parser of configuration requests (CLI --config, the HTTP "config" field, library callers), so none
    falls back to full silently: exactly None, 'full', 'k1,k2,...' of decimal integers or 'skip', or a list of ints
    (not bools, not floats, not even 51.0), 'skip' or None; one count per layer, each in 1..seq_len. Anything else
    is a ConfigError of one line. Whether the graph runs it (its menu, its skipped layers) is the caller's check."""
    if request is None or (isinstance(request, str) and request == FULL):
        return None
    if isinstance(request, str):
        keep = tuple(_text_count(part, i, request, seq_len) for i, part in enumerate(request.split(",")))
    elif isinstance(request, (list, tuple)):
        keep = tuple(_item_count(item, i, request, seq_len) for i, item in enumerate(request))
    else:
        raise ConfigError(f"a configuration is '{FULL}', 'k1,k2,...' (counts or '{SKIP}') or a list of counts, "
                          f"got {type(request).__name__} {shown(request)}")
    if len(keep) != layers:
        raise ConfigError(f"configuration {shown(request)} has {len(keep)} values; the model has {layers} layers")
    return keep


def _text_count(part: str, i: int, request: str, seq_len: int) -> int | None:
    """One comma-separated value of a configuration string: a count in 1..seq_len or 'skip'."""
    text = part.strip()
    if text == SKIP:
        return None
    if not _COUNT.fullmatch(text):
        raise ConfigError(f"configuration {shown(request)}: value {i} ({shown(text, 20)}) is neither a token count "
                          f"nor '{SKIP}'; use '{FULL}' or comma-separated integers")
    digits = text.lstrip("0") or "0"
    return _in_range(int(digits) if len(digits) <= 9 else MAX_TOKENS + 1, i, request, seq_len)  # int() stops at 4300 digits


def _item_count(item: object, i: int, request: object, seq_len: int) -> int | None:
    """One item of a configuration list: an integer count in 1..seq_len, or None or 'skip' (a skipped layer)."""
    if item is None or (isinstance(item, str) and item == SKIP):
        return None
    if isinstance(item, bool) or not isinstance(item, numbers.Integral):
        raise ConfigError(f"configuration {shown(request)}: item {i} must be an integer count or '{SKIP}', "
                          f"got {type(item).__name__} {shown(item, 20)}")
    return _in_range(int(item), i, request, seq_len)


def _in_range(count: int, i: int, request: object, seq_len: int) -> int:
    """`count` when a layer can keep that many tokens of a window; the message never prints a huge int whole."""
    if not 0 < count <= seq_len:
        said = shown(count, 20) if count <= MAX_TOKENS else f"more than {MAX_TOKENS}"
        raise ConfigError(f"configuration {shown(request)}: layer {i} keeps {said} tokens; counts are in 1..{seq_len}")
    return count


def config_label(keep: Sequence[int | None]) -> str:
    """'k1,k2,...' with 'skip' at skipped layers: how answers and menus name a configuration."""
    return ",".join(SKIP if k is None else str(k) for k in keep)


def kept_widths(keep: Sequence[int | None], width: int) -> list[int]:
    """How many tokens each layer keeps of a full window of `width` tokens (the widths of a reduced graph's kept_i
    outputs on it, under either length rule): a count caps what arrives; a skipped layer passes everything on."""
    widths: list[int] = []
    for k in keep:
        width = width if k is None else min(k, width)
        widths.append(width)
    return widths


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bounded_int(value: object) -> bool:
    """A count of tokens, positions or an opset: an int (not a bool) in 1..MAX_TOKENS."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TOKENS


def is_file_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and Path(name).name == name and not name.startswith(".")


def feeding(manifest: dict) -> tuple[bool, bool]:
    """(batchable, pad_to_seq_len) for a manifest: only dynamic INT8 is not batchable (activation scales
    computed per batch), and LAT's variant sees padding, so it needs every window padded to seq_len as validated. A
    manifest's own `feeding` record must agree (check_fields)."""
    lc = manifest["length_config"]
    mode = (manifest.get("quantization") or {}).get("mode")
    variant = Variant(lc.get("variant", Variant.QTOOL))
    return (not (mode and QuantMode(mode).per_batch_scales), drops(lc) and variant.sees_padding)


def retired_problem(rule: object, variant: object, drops: bool) -> str | None:
    """Why a configuration's rule or variant is retired (one line), else None: the one check the kit's manifests and
    the toolchain's configurations share. A configuration that drops nothing keeps every token under any rule."""
    if rule != LengthRule.CAP and drops:
        return RATIO_RETIRED
    return RETIRED_VARIANTS.get(variant) if isinstance(variant, str) else None


def drops(length_config: dict) -> bool:
    """Whether a manifest's configuration drops tokens at some layer (a full one runs the plain model)."""
    return any(k is None or k < length_config["seq_len"] for k in length_config["keep"])


def full_up_to(length_config: dict) -> int:
    """A routed graph's threshold (0 for any other graph): a batch whose longest window has at most this many real
    tokens runs the full model, any other batch the reduced configuration (toolchain.graph.route)."""
    return length_config.get("full_up_to", 0)


def full_up_to_problem(threshold: object, keep: Sequence[int | None], seq_len: int, rule: str, variant: str) -> str | None:
    """Why `threshold` cannot be a length configuration's full_up_to (None: it can). 0: not routed. A routed graph
    trims padding, so its reduced configuration runs the cap rule and a variant that does not see padding."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold < seq_len:
        return f"full_up_to must be 0 or a token count below seq_len {seq_len}, got {shown(threshold)}"
    if threshold == 0:
        return None
    if rule != LengthRule.CAP or variant not in VARIANTS or Variant(variant).sees_padding:
        return f"full_up_to needs the cap rule and a variant that does not see padding, got '{rule}' and '{variant}'"
    if all(k == seq_len for k in keep):
        return "full_up_to needs a reduced configuration (a full one has nothing to route)"
    return None


def onnxruntime_problem(opset: int, version: str) -> str | None:
    """Why onnxruntime `version` cannot run a graph stamped with `opset` correctly (one line), else None."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None  # a development build: trust it
    if opset >= ATTENTION_OPSET and found < ATTENTION_ONNXRUNTIME:
        need = ".".join(map(str, ATTENTION_ONNXRUNTIME))
        return (f"the graph is opset {opset} (ONNX Attention with per-row key lengths), which onnxruntime {version} "
                f"runs wrong; install onnxruntime>={need}")
    return None


def format_of(manifest: dict) -> str:
    """The format a manifest must state: ROUTED_FORMAT for a routed graph, else FORMAT."""
    lc = manifest.get("length_config")
    return ROUTED_FORMAT if isinstance(lc, dict) and full_up_to(lc) else FORMAT


def length_runs(lengths: Sequence[int], batch_size: int, *, threshold: int = 0, sort: bool = True) -> list[list[int]]:
    """Window indices in runs of at most `batch_size` (sorted by length unless `sort` is False). A routed graph
    chooses its branch by a batch's longest window, so under a `threshold` no run mixes windows of at most
    `threshold` tokens with longer ones: every window then answers as it would alone."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if sort else list(range(len(lengths)))
    parts = [[i for i in order if lengths[i] <= threshold], [i for i in order if lengths[i] > threshold]] if threshold else [order]
    return [part[lo: lo + batch_size] for part in parts for lo in range(0, len(part), batch_size)]


def check_fields(m: dict, fail: Callable[[str], NoReturn]) -> None:
    """Check a manifest's fields and their relations (not its files); `fail` raises the caller's error."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            fail(message)

    need(is_file_name(m.get("graph")), f"graph {m.get('graph')!r} must be a file name inside the folder")
    need(m.get("precision") in PRECISIONS, f"precision {m.get('precision')!r} is not one of {PRECISIONS}")
    need(m.get("engine", Engine.ONNXRUNTIME) in ENGINES, f"engine {shown(m.get('engine'))} is not one of {ENGINES}")
    need(m.get("float_precision", FloatPrecision.FP32) in FLOAT_PRECISIONS,
         f"float_precision {shown(m.get('float_precision'))} is not one of {FLOAT_PRECISIONS}")
    for name in ("opset", "max_positions", "doc_stride", "max_answer_length"):
        need(bounded_int(m.get(name)), f"{name} must be an integer in 1..{MAX_TOKENS}, got {shown(m.get(name))}")
    lc = m.get("length_config")
    counts = [k for k in lc["keep"] if k is not None] if isinstance(lc, dict) and isinstance(lc.get("keep"), list) else []
    need(isinstance(lc, dict) and bounded_int(lc.get("seq_len")) and isinstance(lc.get("keep"), list)
         and counts and all(bounded_int(k) and k <= lc["seq_len"] for k in counts)
         and all(a >= b for a, b in zip(counts, counts[1:])),
         f"length_config must hold seq_len and non-increasing keep counts in 1..seq_len (null: a skipped layer), got {lc!r}")
    need(lc.get("rule", LengthRule.RATIO) in LENGTH_RULES, f"length rule {lc.get('rule')!r} is not one of {LENGTH_RULES}")
    retired = retired_problem(lc.get("rule", LengthRule.RATIO), lc.get("variant"), drops(lc))
    need(retired is None, retired or "")
    need(lc.get("variant", Variant.QTOOL) in VARIANTS, f"variant {lc.get('variant')!r} is not one of {VARIANTS}")
    routed = full_up_to_problem(full_up_to(lc), lc["keep"], lc["seq_len"], lc.get("rule", LengthRule.RATIO),
                                lc.get("variant", Variant.QTOOL))
    need(routed is None, routed or "")
    quantization = m.get("quantization") or {}
    need(isinstance(quantization, dict), f"quantization must be an object, got {type(quantization).__name__}")
    mode = quantization.get("mode")
    need(mode is None or mode in QuantMode.choices(), f"quantization mode {mode!r} is not one of {QuantMode.choices()}")
    need(lc["seq_len"] <= m["max_positions"], f"sequence length {lc['seq_len']} exceeds max_positions {m['max_positions']}")
    need(m["doc_stride"] < lc["seq_len"], f"doc_stride {m['doc_stride']} must be below the sequence length {lc['seq_len']}")
    need(m["max_answer_length"] <= lc["seq_len"],
         f"max_answer_length {m['max_answer_length']} exceeds the sequence length {lc['seq_len']}")
    if "feeding" in m:
        need(m["feeding"] == dict(zip(FEEDING_KEYS, feeding(m))),
             f"feeding {m['feeding']!r} contradicts the graph's quantization and length rule")
    iface = m.get("interface")
    need(isinstance(iface, dict) and all(isinstance(iface.get(k), list) and all(isinstance(n, str) for n in iface[k])
                                         for k in ("inputs", "outputs")),
         "interface must list the graph's inputs and outputs by name")
    need("input_ids" in iface["inputs"] and set(iface["inputs"]) <= {*MODEL_INPUTS, KEEP_INPUT},
         f"interface inputs {shown(iface['inputs'], 200)} must include input_ids and come from {[*MODEL_INPUTS, KEEP_INPUT]}")
    check_menu(m, need)
    need(iface["outputs"][:2] == list(SPAN_OUTPUTS), f"interface outputs must start with {list(SPAN_OUTPUTS)}")
    check_kept_outputs(m, need)


def check_kept_outputs(m: dict, need: Callable[[bool, str], None]) -> None:
    """A graph that drops or skips (or takes KEEP_INPUT) reports the positions each layer kept, one output per
    layer after the span logits; a full graph reports none. The kit checks the widths against the graph's."""
    lc, iface = m["length_config"], m["interface"]
    reduced = KEEP_INPUT in iface["inputs"] or any(k != lc["seq_len"] for k in lc["keep"])
    kept = len(iface["outputs"]) - len(SPAN_OUTPUTS)
    need(kept == (len(lc["keep"]) if reduced else 0),
         f"interface outputs {shown(iface['outputs'], 200)} and length configuration {shown(lc['keep'], 200)} disagree: "
         f"a graph that drops or skips reports one kept_i output per layer, a full graph none")


def check_menu(m: dict, need: Callable[[bool, str], None]) -> None:
    """A run-time configuration graph (it takes KEEP_INPUT) has a non-empty menu of configurations it can run,
    under the cap rule; a graph of one configuration has none."""
    runtime = KEEP_INPUT in m["interface"]["inputs"]
    menu = m.get("menu")
    if not runtime:
        need(menu is None, "only a run-time configuration graph (input keep_counts) has a menu")
        return
    lc = m["length_config"]
    need(lc.get("rule") == LengthRule.CAP, "a run-time configuration graph runs the cap rule")
    need(all(k is None or k == lc["seq_len"] for k in lc["keep"]),
         "a run-time configuration graph's length_config is its full configuration (skipped layers: null)")
    need(isinstance(menu, list) and menu and all(isinstance(e, dict) for e in menu),
         "a run-time configuration graph needs a menu: a non-empty list of configurations")
    need(menu[0].get("keep") == lc["keep"], f"the menu's first entry must be the graph's full configuration {lc['keep']}")
    for entry in menu:
        problem = check_keep(entry.get("keep"), lc["keep"], lc["seq_len"])
        need(problem is None, f"menu: {problem}")
        f1 = entry.get("f1") or {}
        need(isinstance(f1, dict) and all(_number(v) and 0 <= v <= 100 for v in f1.values()),
             f"menu entry {entry.get('keep')}: f1 must map workloads to numbers in 0..100")
        for name in ("ms", "macs_ratio"):
            need(entry.get(name) is None or (_number(entry[name]) and entry[name] > 0),
                 f"menu entry {entry.get('keep')}: {name} must be a positive number")


def _number(value: object) -> bool:
    """An int or float that is not a bool and not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
