"""Answer questions from a qtool artifact folder with onnxruntime, tokenizers and numpy only.

The windowing is SQuAD's (question + context, the context truncated with overlap `doc_stride`, windows of at
most the manifest's sequence length), windows run unpadded (each at its real length; equal lengths share a
batch), and spans are decoded by `spans.best_span`, the decoder qtool's own scoring uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .contract import (KEEP_INPUT, MANIFEST, MODEL_INPUTS, SPAN_OUTPUTS, TOKENIZER, MenuEntry, check_fields, check_keep, feeding,
                       format_of, full_up_to, length_runs, onnxruntime_problem, sha256)
from .menu import MenuTimes, choose, measure
from .errors import QtoolError
from .spans import best_span


class KitError(QtoolError, ValueError):
    """Base of every error the kit raises on bad input: one line that says what is wrong."""


class ArtifactError(KitError):
    """An artifact folder that is missing, altered, or whose manifest is not of the expected shape."""


class InputError(KitError):
    """A question or context the artifact cannot answer (empty, or a question too long for a window)."""


class ConfigError(KitError):
    """A configuration the artifact cannot run: not on its menu, or asked of a graph of one configuration."""


def inside(folder: Path, name: str) -> bool:
    """True when `folder/name` is a relative path that stays inside `folder`, symlinks resolved."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return False
    root = folder.resolve()
    return (folder / name).resolve().is_relative_to(root)


def max_question_tokens(seq_len: int, doc_stride: int, special_tokens: int) -> int:
    """The longest question (in tokens) a window of `seq_len` with `doc_stride` tokens of overlap can hold:
    what the special tokens and more than `doc_stride` context tokens leave. One rule for kit and toolchain."""
    return seq_len - special_tokens - doc_stride - 1


def check_text(label: str, text: object) -> str:
    """A question or context the tokenizer can take: a non-empty string of valid Unicode (no lone surrogates,
    which undecodable bytes on a command line and JSON escapes like "\\ud800" produce)."""
    if not isinstance(text, str):
        raise InputError(f"the {label} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the {label} is not valid Unicode text: character {exc.start} is "
                         f"{text[exc.start]!r} (a lone surrogate or a byte that is not UTF-8)") from None
    if not text.strip():
        raise InputError(f"the {label} is empty")
    return text


def read_text_file(path: str | Path, what: str = "context file") -> str:
    """Read a UTF-8 text file; a file that is not UTF-8 is one line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def ort_session(path: Path, threads: int | None = None, error: type[Exception] = ArtifactError):
    """An onnxruntime CPU session with full graph optimisation, as the toolchain validated and timed the graph
    (the toolchain opens its sessions here too); a graph onnxruntime cannot load raises `error`, one line."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise error(f"{path} is not a loadable ONNX graph: {exc}") from exc


def check_manifest(folder: str | Path) -> dict:
    """Read manifest.json, re-hash every file it lists, and check the fields the kit relies on.

    The fields are checked by `contract.check_fields`, the same function the toolchain writes manifests with.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a qtool artifact (no {MANIFEST})")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc

    def fail(message: str):
        raise ArtifactError(f"{path}: {message}")

    def need(ok: bool, message: str) -> None:
        if not ok:
            fail(message)

    need(isinstance(m, dict), f"a manifest must be a JSON object, got {type(m).__name__}")
    need(m.get("format") == format_of(m), f"unknown format {m.get('format')!r}, expected {format_of(m)}")
    files = m.get("files")
    need(isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
         "files must map file names to sha256")
    for name, digest in files.items():
        file = folder / name
        need(inside(folder, name), f"file {name!r} is outside the folder (a path or symlink that leads out of it)")
        if not file.is_file():
            raise ArtifactError(f"{folder}: {name} is listed in the manifest but missing")
        if sha256(file) != digest:
            raise ArtifactError(f"{folder}: {name} does not match its sha256 in the manifest (altered or corrupt)")
    check_fields(m, fail)
    need(m["graph"] in files, f"the graph {m['graph']!r} is not among the checksummed files")
    need(TOKENIZER in files, f"{TOKENIZER} is not among the checksummed files; the kit needs the fast tokenizer")
    return m


def _probe(session, manifest: dict, folder: Path, pad_id: int) -> None:
    """Run the graph once on a full window of the manifest's sequence length: a manifest that promises more
    positions than the graph has (or numbers the graph cannot take) is refused at open, never mid-request."""
    seq_len = manifest["length_config"]["seq_len"]
    feed = {"input_ids": np.full((1, seq_len), pad_id, dtype=np.int64), "attention_mask": np.ones((1, seq_len), np.int64),
            "token_type_ids": np.zeros((1, seq_len), np.int64)}
    if KEEP_INPUT in manifest["interface"]["inputs"]:  # the smallest menu entry: the one that drops the most
        feed[KEEP_INPUT] = MenuEntry.from_dict(min(manifest["menu"], key=lambda e: sum(k or 0 for k in e["keep"]))).feed(seq_len)
    try:
        session.run(list(SPAN_OUTPUTS), {k: v for k, v in feed.items() if k in manifest["interface"]["inputs"]})
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{folder}: the graph does not run on a window of {seq_len} tokens, the manifest's "
                            f"sequence length (manifest altered?): {first[:300]}") from None


@dataclass(frozen=True)
class Answer:
    text: str
    score: float  # start logit + end logit of the span; -inf when no span was allowed
    start: int  # character offsets into the context: context[start:end] == text
    end: int
    config: str = ""  # the length configuration that produced it ('full' or 'k1,k2,...')

    def to_dict(self) -> dict:
        return {"text": self.text, "score": self.score if math.isfinite(self.score) else None,
                "start": self.start, "end": self.end, "config": self.config}


@dataclass
class Windows:
    """One question's windows: token ids, token types and context offsets ((-1, -1) outside the context)."""

    question: str
    context: str
    input_ids: list[np.ndarray]  # int64 [L_i] per window, unpadded
    token_type_ids: list[np.ndarray]
    offsets: list[np.ndarray]  # int64 [L_i, 2]

    def __len__(self) -> int:
        return len(self.input_ids)


def _counts(config: str | Sequence[int | str | None]) -> list[int | None] | None:
    """'k1,k2,...' or a list as keep counts (None at 'skip'); None when it is not a list of counts."""
    parts = config.split(",") if isinstance(config, str) else list(config)
    try:
        return [None if p is None or str(p).strip() == "skip" else int(p) for p in parts]
    except (TypeError, ValueError):
        return None


class Artifact:
    """A checked artifact ready to answer: the onnxruntime session, the tokenizer and the manifest."""

    def __init__(self, folder: Path, manifest: dict, session, tokenizer, batch_size: int, pad_id: int = 0) -> None:
        self.folder = folder
        self.manifest = manifest
        self.session = session
        self.batch_size = batch_size
        self.seq_len: int = manifest["length_config"]["seq_len"]
        self.doc_stride: int = manifest["doc_stride"]
        self.max_answer_length: int = manifest["max_answer_length"]
        self.max_positions: int = manifest["max_positions"]
        self.inputs: tuple[str, ...] = tuple(manifest["interface"]["inputs"])
        batchable, self.pad_to_seq_len = feeding(manifest)
        self.full_up_to = full_up_to(manifest["length_config"])  # a routed graph: runs never straddle it
        # Dynamic INT8 computes activation scales per batch: a window's answer would depend on its batch-mates,
        # so such graphs run one window at a time (what qtool verify's unpadded protocol measures).
        if not batchable:
            self.batch_size = 1
        self.menu: list[MenuEntry] = [MenuEntry.from_dict(e) for e in manifest.get("menu") or []]
        self.times: MenuTimes | None = None  # measure_menu() fills it: what budgets are predicted with
        self._pad_id = pad_id
        self._tokenizer = tokenizer
        self._specials = tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0
        self._plain = tokenizer.__class__.from_str(tokenizer.to_str())  # same vocabulary, no truncation: lengths
        self._plain.no_truncation()
        # A question may take what a window leaves after the special tokens and more than doc_stride context tokens.
        self.max_question_tokens = max_question_tokens(self.seq_len, self.doc_stride, self._specials)

    @classmethod
    def open(cls, folder: str | Path, *, threads: int | None = None, batch_size: int = 16) -> "Artifact":
        """Verify every sha256 and the manifest's shape, load the graph and check it has the stated interface."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such artifact folder: {folder}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        manifest = check_manifest(folder)
        import onnxruntime

        problem = onnxruntime_problem(manifest["opset"], onnxruntime.__version__)
        if problem:
            raise ArtifactError(f"{folder}: {problem}")
        session = ort_session(folder / manifest["graph"], threads)
        names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        iface = manifest["interface"]
        if names[0] != iface["inputs"] or names[1] != iface["outputs"]:
            raise ArtifactError(f"{folder}: manifest interface {iface} is not the graph's "
                                f"(inputs {names[0]}, outputs {names[1]})")
        try:
            tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        except Exception as exc:
            raise ArtifactError(f"{folder / TOKENIZER} is not a loadable tokenizer: {exc}") from exc
        pad_id = (tokenizer.padding or {}).get("pad_id")
        if pad_id is None:
            pad_id = next((i for t in ("[PAD]", "<pad>") if (i := tokenizer.token_to_id(t)) is not None), 0)
        tokenizer.no_padding()
        tokenizer.enable_truncation(manifest["length_config"]["seq_len"], stride=manifest["doc_stride"],
                                    strategy="only_second")
        _probe(session, manifest, folder, pad_id)
        return cls(folder, manifest, session, tokenizer, batch_size, pad_id)

    @property
    def name(self) -> str:
        return self.folder.name

    def label(self, entry: MenuEntry | None) -> str:
        """'full', 'k1,k2,...' or 'k1,k2,... (full up to N)' (a routed graph): the configuration an answer came from."""
        keep = entry.keep if entry is not None else self.manifest["length_config"]["keep"]
        if all(k == self.seq_len for k in keep):
            return "full"
        routed = f" (full up to {self.full_up_to})" if self.full_up_to else ""
        return ",".join("skip" if k is None else str(k) for k in keep) + routed

    def entry(self, config: str | Sequence[int | None] | MenuEntry | None = None) -> MenuEntry | None:
        """The menu entry `config` names: 'full' (the menu's first entry), 'k1,k2,...', a list of counts ('skip' or
        None at a skipped layer) or an entry; None: the first. A graph of one configuration has no menu (None);
        asking it for another configuration is an error."""
        if isinstance(config, MenuEntry):
            config = list(config.keep)
        keep = None if config is None or config == "full" else _counts(config)
        if not self.menu:
            own = self.manifest["length_config"]["keep"]
            if config is not None and keep != own and not (config == "full" and self.label(None) == "full"):
                raise ConfigError(f"{self.name} runs one configuration ({self.label(None)}); export --config runtime "
                                  "for a graph that chooses per request")
            return None
        if keep is None:
            return self.menu[0]
        for entry in self.menu:
            if list(entry.keep) == keep:
                return entry
        problem = check_keep(keep, self.manifest["length_config"]["keep"], self.seq_len)
        raise ConfigError(problem or f"configuration {config!r} is not on the menu of {self.name}: "
                          + "; ".join(self.label(e) for e in self.menu))

    def measure_menu(self, *, lengths: Sequence[int] | None = None, rounds: int = 5) -> MenuTimes:
        """Time every menu entry on this machine, one window of random tokens at a time (see menu.measure)."""
        if not self.menu:
            raise ConfigError(f"{self.name} has no menu: it runs one configuration")
        lengths = tuple(lengths or (self.seq_len // 4, self.seq_len // 2, self.seq_len))
        rng = np.random.default_rng(0)

        def run_window(entry: MenuEntry, n: int) -> None:
            feed = {"input_ids": rng.integers(1000, 20000, (1, n)), "attention_mask": np.ones((1, n), np.int64),
                    "token_type_ids": np.zeros((1, n), np.int64), KEEP_INPUT: entry.feed(self.seq_len)}
            self.session.run(list(SPAN_OUTPUTS), {k: v for k, v in feed.items() if k in self.inputs})

        self.times = measure(run_window, self.menu, lengths, rounds=rounds, label=self.label)
        return self.times

    def choose(self, prepared: Sequence[Windows], budget_ms: float) -> MenuEntry | None:
        """The most accurate menu entry whose predicted time for `prepared` meets `budget_ms` (menu.choose)."""
        if not self.menu:
            raise ConfigError(f"{self.name} runs one configuration; a budget needs a run-time configuration graph")
        if self.times is None:
            self.measure_menu()
        return choose(self.menu, self.times, [len(ids) for item in prepared for ids in item.input_ids], budget_ms,
                      label=self.label)

    def describe(self) -> dict:
        """What a health check reports: which graph answers and under which length configuration."""
        lc = self.manifest["length_config"]
        return {"artifact": self.name, "precision": self.manifest["precision"],
                "length_config": {"keep": lc["keep"], "seq_len": lc["seq_len"], "rule": lc.get("rule", "ratio"),
                                  "variant": lc.get("variant", "qtool"), "full_up_to": self.full_up_to},
                "doc_stride": self.doc_stride, "max_answer_length": self.max_answer_length,
                "max_positions": self.max_positions, "max_question_tokens": self.max_question_tokens,
                "windows_per_run": self.batch_size, "pad_to_seq_len": self.pad_to_seq_len,
                "menu": [{**e.to_dict(), "label": self.label(e)} for e in self.menu] or None,
                "sha256": self.manifest["files"][self.manifest["graph"]]}

    def windows(self, question: str, context: str) -> Windows:
        """Split question + context into overlapping windows; refuse what cannot be windowed."""
        check_text("question", question)
        check_text("context", context)
        q_tokens = len(self._plain.encode(question, add_special_tokens=False).ids)
        if q_tokens == 0:
            raise InputError("the question has no tokens the model knows")
        if q_tokens > self.max_question_tokens:
            raise InputError(
                f"the question is {q_tokens} tokens; windows are {self.seq_len} tokens (the model takes at most "
                f"{self.max_positions}) with {self.doc_stride} tokens of overlap, so a question may have at most "
                f"{self.max_question_tokens}")
        first = self._tokenizer.encode(question, context)
        out = Windows(question, context, [], [], [])
        for enc in [first, *first.overflowing]:
            n = len(enc.ids)
            if n > self.max_positions:  # cannot happen with a checked manifest; never feed the graph past its table
                raise InputError(f"a window of {n} tokens exceeds the model's {self.max_positions} positions")
            seq = np.array([-1 if s is None else s for s in enc.sequence_ids])
            offsets = np.full((n, 2), -1, dtype=np.int64)
            ctx = seq == 1
            offsets[ctx] = np.asarray(enc.offsets, dtype=np.int64).reshape(n, 2)[ctx]
            out.input_ids.append(np.asarray(enc.ids, dtype=np.int64))
            out.token_type_ids.append(np.asarray(enc.type_ids, dtype=np.int64))
            out.offsets.append(offsets)
        if not any((o[:, 0] >= 0).any() for o in out.offsets):
            raise InputError("the context has no tokens the model knows")
        return out

    def logits(self, prepared: Sequence[Windows],
               entry: MenuEntry | None = None) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """Start/end logits per window. Windows sorted by length share runs of up to `batch_size`, each padded
        to its longest (padding ranks last under the cap rule, so a window answers as it would alone), or, for
        graphs that expect it (`pad_to_seq_len`), to seq_len. Graphs that are not batchable run one at a time.
        A run-time configuration graph runs `entry` (default: its menu's first, full)."""
        keep = {KEEP_INPUT: (entry or self.menu[0]).feed(self.seq_len)} if self.menu else {}
        flat = [(q, w) for q, item in enumerate(prepared) for w in range(len(item))]
        length = {key: len(prepared[key[0]].input_ids[key[1]]) for key in flat}
        out: list[list] = [[None] * len(item) for item in prepared]
        runs = length_runs([length[key] for key in flat], self.batch_size, threshold=self.full_up_to)
        for rows in ([flat[i] for i in run] for run in runs):
            width = self.seq_len if self.pad_to_seq_len else max(length[k] for k in rows)
            feed = {name: np.full((len(rows), width), self._pad_id if name == "input_ids" else 0, dtype=np.int64)
                    for name in MODEL_INPUTS}
            for i, (q, w) in enumerate(rows):
                n = length[(q, w)]
                feed["input_ids"][i, :n] = prepared[q].input_ids[w]
                feed["attention_mask"][i, :n] = 1
                feed["token_type_ids"][i, :n] = prepared[q].token_type_ids[w]
            start, end = self.session.run(list(SPAN_OUTPUTS), {k: v for k, v in (feed | keep).items() if k in self.inputs})
            for i, (q, w) in enumerate(rows):
                n = length[(q, w)]
                out[q][w] = (start[i, :n], end[i, :n])
        return out

    def run(self, prepared: Sequence[Windows], config: str | Sequence[int | None] | MenuEntry | None = None
            ) -> list[Answer]:
        """Answer already-windowed questions: batched graph runs, then the best span per question."""
        entry = config if isinstance(config, MenuEntry) else self.entry(config)
        label = self.label(entry)
        answers = []
        for item, logits in zip(prepared, self.logits(prepared, entry)):
            span = best_span(((s, e, o) for (s, e), o in zip(logits, item.offsets)),
                             max_answer_length=self.max_answer_length)
            if span is None:
                answers.append(Answer("", float("-inf"), 0, 0, label))
            else:
                answers.append(Answer(item.context[span.start_char: span.end_char], span.score,
                                      span.start_char, span.end_char, label))
        return answers

    def answer(self, question: str, context: str, *, config: str | Sequence[int | None] | None = None,
               budget_ms: float | None = None) -> Answer:
        """Answer one question; a run-time configuration graph runs `config` (a menu entry), or the most accurate
        entry predicted to answer within `budget_ms`, or full."""
        return self.answer_batch([(question, context)], config=config, budget_ms=budget_ms)[0]

    def answer_batch(self, pairs: Sequence[tuple[str, str]], *, config: str | Sequence[int | None] | None = None,
                     budget_ms: float | None = None) -> list[Answer]:
        """Answer many (question, context) pairs; their windows share graph runs (and one configuration)."""
        if config is not None and budget_ms is not None:
            raise ConfigError("name a configuration or a budget, not both")
        if budget_ms is not None and not budget_ms > 0:
            raise ConfigError(f"budget_ms must be a positive number of milliseconds, got {budget_ms}")
        prepared = [self.windows(q, c) for q, c in pairs]
        entry = self.choose(prepared, budget_ms) if budget_ms is not None else self.entry(config)
        return self.run(prepared, entry)
