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

from . import bounds
from .contract import (FULL, QTOOL_KIND, Engine, KEEP_INPUT, MANIFEST, LengthRule, MODEL_INPUTS, SPAN_OUTPUTS, TOKENIZER, MenuEntry, check_fields, check_keep,
                       config_label, feeding, format_of, full_up_to, kept_widths, length_runs, onnxruntime_problem,
                       parse_config, sha256)
from .engines import engine_of, open_session, runs_exactly
from .errors import ArtifactError, ConfigError, InputError, KitError, OptionError
from .graphfacts import GraphFacts, read_graph_facts
from .menu import MenuTimes, choose, measure
from .spans import best_span

__all__ = ["Answer", "Artifact", "ArtifactError", "ConfigError", "InputError", "KitError", "OptionError", "Windows",
           "check_graph", "check_manifest", "read_text_file"]


def inside(folder: Path, name: str) -> bool:
    """True when `folder/name` is a relative path that stays inside `folder`, symlinks resolved."""
    try:
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            return False
        return (folder / name).resolve().is_relative_to(folder.resolve())
    except (ValueError, OSError):  # a NUL byte, a name too long for the file system, a symlink loop
        return False


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
    except RecursionError:
        raise ArtifactError(f"{path} nests JSON too deeply to be a manifest") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None

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


def check_graph(folder: Path, manifest: dict) -> GraphFacts:
    """Read what the graph itself states (graphfacts) and refuse a manifest that says otherwise: the opset (which
    onnxruntime runs it right), a routed graph's threshold (which windows may share a run), the positions."""
    where = folder / MANIFEST
    facts = read_graph_facts(folder / manifest["graph"])  # GraphFormatError (an ArtifactError) if unreadable
    if facts.opset != manifest["opset"]:
        raise ArtifactError(f"{where}: manifest says opset {manifest['opset']}, the graph has opset {facts.opset}")
    threshold = full_up_to(manifest["length_config"])
    if facts.route_threshold != threshold:
        graph = (f"routes windows of at most {facts.route_threshold} tokens to the full model" if facts.route_threshold
                 else "is not routed")
        raise ArtifactError(f"{where}: manifest says full_up_to {threshold} (0: not routed), the graph {graph}")
    if facts.position_rows is not None and manifest["max_positions"] > facts.position_rows:
        raise ArtifactError(f"{where}: manifest says max_positions {manifest['max_positions']}, the graph's position "
                            f"table has {facts.position_rows} rows (manifest altered?)")
    import onnxruntime

    problem = onnxruntime_problem(facts.opset, onnxruntime.__version__)
    if problem:
        raise ArtifactError(f"{folder}: {problem}")
    return facts


def special_tokens(tokenizer) -> int:
    """Special tokens the tokenizer adds to a question + context pair ([CLS] q [SEP] c [SEP]: 3)."""
    return tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0


def largest_token_id(tokenizer) -> int:
    """The largest id the tokenizer can emit (added tokens included): the graph's word table must have that row."""
    return max(tokenizer.get_vocab(with_added_tokens=True).values(), default=0)


def load_tokenizer(folder: Path, manifest: dict, facts: GraphFacts) -> tuple[object, int]:
    """The artifact's tokenizer, set to window as the manifest says, and its pad id. Refused in one line: ids the
    graph's word table does not have, or a doc_stride that leaves no room for a question."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
    except Exception as exc:
        raise ArtifactError(f"{folder / TOKENIZER} is not a loadable tokenizer: {exc}") from exc
    largest = largest_token_id(tokenizer)
    if facts.vocab_rows is not None and largest >= facts.vocab_rows:
        raise ArtifactError(f"{folder}: the tokenizer has token ids up to {largest}, the graph's word table only "
                            f"{facts.vocab_rows} rows (a tokenizer of another model?)")
    seq_len, stride, specials = manifest["length_config"]["seq_len"], manifest["doc_stride"], special_tokens(tokenizer)
    if max_question_tokens(seq_len, stride, specials) < 1:
        raise ArtifactError(f"{folder / MANIFEST}: doc_stride {stride} leaves no room for a question in windows of "
                            f"{seq_len} tokens ({specials} of them special)")
    pad_id = (tokenizer.padding or {}).get("pad_id")
    if pad_id is None:
        pad_id = next((i for t in ("[PAD]", "<pad>") if (i := tokenizer.token_to_id(t)) is not None), 0)
    tokenizer.no_padding()
    try:
        tokenizer.enable_truncation(seq_len, stride=stride, strategy="only_second")
    except Exception as exc:  # tokenizers raises its own error types
        raise ArtifactError(f"{folder / MANIFEST}: the tokenizer cannot window as the manifest says: {exc}") from None
    return tokenizer, pad_id


def check_runs_as_described(folder: Path, manifest: dict, session) -> None:
    """What the kit checks at open, for a caller with its own session (the toolchain's verify and route): the
    graph's facts and the tokenizer's ids against the manifest, and one run on a full window whose kept-token widths
    must be what the manifest's configuration keeps."""
    facts = check_graph(folder, manifest)
    tokenizer, _ = load_tokenizer(folder, manifest, facts)
    _probe(session, manifest, folder, largest_token_id(tokenizer))


def _probe(session, manifest: dict, folder: Path, token_id: int) -> None:
    """Run the graph once on a full window of the manifest's sequence length, every token the tokenizer's largest
    id: a manifest that promises more positions than the graph has (or numbers it cannot take) is refused at open,
    never mid-request. A graph that drops tokens reports how many each layer kept: they must be what the manifest's
    configuration keeps, so answers are labelled with what really ran."""
    seq_len = manifest["length_config"]["seq_len"]
    keep = manifest["length_config"]["keep"]
    feed = {"input_ids": np.full((1, seq_len), token_id, dtype=np.int64), "attention_mask": np.ones((1, seq_len), np.int64),
            "token_type_ids": np.zeros((1, seq_len), np.int64)}
    if KEEP_INPUT in manifest["interface"]["inputs"]:  # the smallest menu entry: the one that drops the most
        entry = MenuEntry.from_dict(min(manifest["menu"], key=lambda e: sum(k or 0 for k in e["keep"])))
        feed[KEEP_INPUT], keep = entry.feed(seq_len), entry.keep
    try:
        outputs = session.run(None, {k: v for k, v in feed.items() if k in manifest["interface"]["inputs"]})
    except Exception as exc:  # onnxruntime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{folder}: the graph does not run on a window of {seq_len} tokens (the manifest's sequence "
                            f"length) of token id {token_id} (the tokenizer's largest): {first[:300]}") from None
    widths = [int(o.shape[-1]) for o in outputs[len(SPAN_OUTPUTS):]]  # none: a full graph (contract.check_kept_outputs)
    if widths and widths != kept_widths(keep, seq_len):
        raise ArtifactError(f"{folder}: on a full window the graph keeps {widths} tokens per layer, the manifest's "
                            f"configuration {config_label(keep)} keeps {kept_widths(keep, seq_len)} (manifest altered?)")


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
        self._largest_id = largest_token_id(tokenizer)  # measure_menu's random windows stay inside the word table
        self._specials = special_tokens(tokenizer)
        self._plain = tokenizer.__class__.from_str(tokenizer.to_str())  # same vocabulary, no truncation: lengths
        self._plain.no_truncation()
        # A question may take what a window leaves after the special tokens and more than doc_stride context tokens.
        self.max_question_tokens = max_question_tokens(self.seq_len, self.doc_stride, self._specials)

    @classmethod
    def open(cls, folder: str | Path, *, threads: int | None = None, batch_size: int = 16,
             engine: str | None = None) -> "Artifact":
        """Verify every sha256, the manifest's shape and what it says against the graph; load the graph and the
        tokenizer and run the graph once. `threads`, `batch_size`: checked against bounds.BOUNDS first. `engine`:
        the runtime to run on (default: the manifest's `engine`, else onnxruntime)."""
        bounds.check_all(threads=threads, batch_size=batch_size)
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such artifact folder: {folder}")
        manifest = check_manifest(folder)
        facts = check_graph(folder, manifest)
        session = open_session(folder / manifest["graph"], engine_of(engine or manifest.get("engine", Engine.ONNXRUNTIME)),
                               threads, exact=runs_exactly(manifest.get("kind", QTOOL_KIND), manifest.get("float_precision")))
        names = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        iface = manifest["interface"]
        if names[0] != iface["inputs"] or names[1] != iface["outputs"]:
            raise ArtifactError(f"{folder}: manifest interface {iface} is not the graph's "
                                f"(inputs {names[0]}, outputs {names[1]})")
        tokenizer, pad_id = load_tokenizer(folder, manifest, facts)
        _probe(session, manifest, folder, largest_token_id(tokenizer))
        return cls(folder, manifest, session, tokenizer, batch_size, pad_id)

    @property
    def name(self) -> str:
        return self.folder.name

    def label(self, entry: MenuEntry | None) -> str:
        """'full', 'k1,k2,...' or 'k1,k2,... (full up to N)' (a routed graph): the configuration an answer came from."""
        keep = entry.keep if entry is not None else self.manifest["length_config"]["keep"]
        if all(k == self.seq_len for k in keep):
            return FULL
        routed = f" (full up to {self.full_up_to})" if self.full_up_to else ""
        return config_label(keep) + routed

    def entry(self, config: object = None) -> MenuEntry | None:
        """The menu entry `config` names: None or 'full' (the menu's first entry), 'k1,k2,...', a list of counts
        ('skip' or None at a skipped layer) or an entry (contract.parse_config reads it; anything else is a
        ConfigError). A graph of one configuration has no menu (None); asking it for another is an error."""
        if isinstance(config, MenuEntry):
            config = list(config.keep)
        layout = self.manifest["length_config"]["keep"]
        keep = parse_config(config, len(layout), self.seq_len)
        if not self.menu:
            if config is None or keep == tuple(layout) or (keep is None and self.label(None) == FULL):
                return None
            raise ConfigError(f"{self.name} runs one configuration ({self.label(None)}); export --config runtime "
                              "for a graph that chooses per request")
        if keep is None:
            return self.menu[0]
        for entry in self.menu:
            if entry.keep == keep:
                return entry
        problem = check_keep(list(keep), layout, self.seq_len)
        raise ConfigError(problem or f"configuration {config_label(keep)} is not on the menu of {self.name}: "
                          + "; ".join(self.label(e) for e in self.menu))

    def measure_menu(self, *, lengths: Sequence[int] | None = None, rounds: int = 5) -> MenuTimes:
        """Time every menu entry on this machine, one window of random tokens at a time (see menu.measure)."""
        if not self.menu:
            raise ConfigError(f"{self.name} has no menu: it runs one configuration")
        lengths = tuple(lengths or (self.seq_len // 4, self.seq_len // 2, self.seq_len))
        rng = np.random.default_rng(0)

        def run_window(entry: MenuEntry, n: int) -> None:
            feed = {"input_ids": rng.integers(0, self._largest_id + 1, (1, n)), "attention_mask": np.ones((1, n), np.int64),
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
                "length_config": {"keep": lc["keep"], "seq_len": lc["seq_len"], "rule": lc.get("rule", LengthRule.RATIO),
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

    def run(self, prepared: Sequence[Windows], config: object = None) -> list[Answer]:
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

    def answer(self, question: str, context: str, *, config: object = None, budget_ms: float | None = None) -> Answer:
        """Answer one question; a run-time configuration graph runs `config` (a menu entry), or the most accurate
        entry predicted to answer within `budget_ms`, or full."""
        return self.answer_batch([(question, context)], config=config, budget_ms=budget_ms)[0]

    def answer_batch(self, pairs: Sequence[tuple[str, str]], *, config: object = None,
                     budget_ms: float | None = None) -> list[Answer]:
        """Answer many (question, context) pairs; their windows share graph runs (and one configuration)."""
        if config is not None and budget_ms is not None:
            raise ConfigError("name a configuration or a budget, not both")
        budget_ms = bounds.check("budget_ms", budget_ms)
        prepared = [self.windows(q, c) for q, c in pairs]
        entry = self.choose(prepared, budget_ms) if budget_ms is not None else self.entry(config)
        return self.run(prepared, entry)
