"""Every bad input is one `Error:` line (CLI) or a JSON 4xx (server), never a traceback; memory-bounded data.

The structural guard: every `raise` in toolchain/ and runtime/ raises a `QtoolError` (the one base the CLI
catches), a file error the CLI shows as one line, or is listed below as a bug-only invariant.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qtool_runtime.errors import OS_INPUT_ERRORS, QtoolError
from toolchain.core.settings import QuantizeSettings
from toolchain.core import atomic
from toolchain.data import squad
from toolchain.cli.commands import main

from conftest import REFERENCE_MODEL

ROOT = Path(__file__).resolve().parents[2]  # tests/cli/ -> the checkout
REFERENCE = squad.default_squad_dir().parent / "models" / REFERENCE_MODEL  # where conftest's trained_dir copies it from
# Raises that only a programming error reaches (library misuse, an internal invariant): a traceback is right.
BUG_ONLY = {
    ("toolchain/data/squad.py", "postprocess"), ("toolchain/data/squad.py", "scores_of"), ("toolchain/graph/runtime.py", "batches"),
    ("toolchain/core/atomic.py", "staging_dir"), ("toolchain/core/atomic.py", "_on_sigterm"),
    ("runtime/qtool_runtime/kit.py", "open"), ("runtime/qtool_runtime/serve.py", "__init__"),
    ("runtime/qtool_runtime/serve.py", "__enter__"),
    ("toolchain/evaluate/latency.py", "load"),  # a ValueError caught three lines below and re-raised as InputError
}
CLICK_ERRORS = {"BadParameter", "UsageError", "ClickException"}


def _raise_sites():
    for path in sorted([*ROOT.joinpath("toolchain").rglob("*.py"), *ROOT.joinpath("runtime", "qtool_runtime").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(func):
                if isinstance(node, ast.Raise) and node.exc is not None:
                    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                    name = exc.id if isinstance(exc, ast.Name) else exc.attr if isinstance(exc, ast.Attribute) else None
                    yield rel, func.name, node.lineno, name


def _module(rel: str):
    return importlib.import_module(rel.removeprefix("runtime/").removesuffix(".py").replace("/", ".").removesuffix(".__init__"))


def test_every_raise_is_one_line_or_a_known_bug():
    """A new error type that does not derive from QtoolError fails here, before it escapes as a traceback."""
    sites = list(_raise_sites())
    classes = {name: value for rel in {s[0] for s in sites} for name, value in vars(_module(rel)).items()
               if isinstance(value, type) and issubclass(value, BaseException)}  # also names imported in functions
    escaping = []
    for rel, func, line, name in sites:
        if name is None or name[0].islower() or (rel, func) in BUG_ONLY:  # `raise exc` re-raises a caught error
            continue
        if rel.startswith("toolchain/cli/") and name in CLICK_ERRORS or name == "RequestError":  # click and HTTP own these
            continue
        cls = getattr(_module(rel), name, None) or classes.get(name) or getattr(builtins, name, None)
        if not (isinstance(cls, type) and issubclass(cls, (QtoolError, *OS_INPUT_ERRORS))):
            escaping.append(f"{rel}:{line} {func} raises {name}")
    assert not escaping, "errors the CLI would show as a traceback:\n" + "\n".join(escaping)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result, message: str, code: int = 1) -> None:
    """Exit 1 with one `Error:` line (or click's usage error, exit 2, whose last line is the `Error:`)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert (len(lines) == 1 if code == 1 else True) and lines[-1].startswith("Error: "), result.output
    assert message in result.output, result.output


def _squad_file(path: Path, question: str, answers: list) -> Path:
    context = "Denver Broncos won Super Bowl 50 at Levi's Stadium in Santa Clara, California."
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": question, "answers": answers}]}]}]}
    path.write_text(json.dumps(data))
    return path


GOLD = [{"text": "Denver Broncos", "answer_start": 0}]


@pytest.mark.parametrize("case", ["out-file", "out-foreign", "max-length-small", "max-length-positions", "freeze-all",
                                  "teacher-without-length-drop"])
def test_train_input_errors_are_one_line(tmp_path, case):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args, message = {
        "out-file": (["--out", blocker], "is a file"),
        "out-foreign": (["--out", foreign], "not a model folder"),
        "max-length-small": (["--out", tmp_path / "m", "--max-length", 16], "--max-length must be at least 32"),
        "max-length-positions": (["--out", tmp_path / "m", "--max-length", 1024], "exceeds what"),
        "freeze-all": (["--out", tmp_path / "m", "--freeze-layers", 6], "--freeze-layers must be less than the model's 6"),
        "teacher-without-length-drop": (["--out", tmp_path / "m", "--teacher", "frozen"],
                                        "--teacher frozen must be used with --length-drop"),
    }[case]
    one_line(cli("train", "--base", "minilm", *args, "--max-steps", 1), message, code=2 if case == "out-file" else 1)


@pytest.mark.parametrize("case", ["questions", "workers", "latency-missing", "latency-bad", "route-without-latency"])
def test_search_input_errors_are_one_line(tmp_path, case):
    bad = tmp_path / "bad.json"
    bad.write_text('{"coefficients": 3}')
    args, message = {
        "questions": (["--questions", 90_000], "asks for more than SQuAD train holds"),
        "workers": (["--workers", 2], "several workers must share a study"),
        "latency-missing": (["--latency-model", tmp_path / "none.json"], "does not exist"),
        "latency-bad": (["--latency-model", bad], "is not a latency model"),
        "route-without-latency": (["--route"], "--route needs --latency-model"),
    }[case]
    one_line(cli("search", "--model", REFERENCE, "--trials", 1, *args), message)


def test_squad_input_errors_are_one_line(tmp_path):
    """A question longer than its windows, and a v1.1 question with no answers: refused in one line."""
    long_question = _squad_file(tmp_path / "long.json", "Who " + "really " * 80 + "won?", GOLD)
    one_line(cli("eval", "--model", REFERENCE, "--squad", long_question, "--seq-len", 64),
             "question 'q1' is 83 tokens; windows of 64 tokens")
    empty = _squad_file(tmp_path / "empty.json", "Who won?", [])
    one_line(cli("eval", "--model", REFERENCE, "--squad", empty), "has no answers")


def test_featurize_refuses_long_questions_instead_of_panicking(minilm_tokenizer):
    examples = squad.load_squad("dev", limit=3)
    long = squad.SquadExample("long", "t", "why " * 50, examples[0].context, ("x",), (0,))
    with pytest.raises(squad.InputError, match="question 'long' is 50 tokens"):
        squad.featurize([*examples, long], minilm_tokenizer, max_length=64, doc_stride=16)
    assert len(squad.featurize(examples, minilm_tokenizer, max_length=64, doc_stride=16)) > 3


def test_chunked_featurize_equals_one_pass(minilm_tokenizer, monkeypatch):
    """Chunks of different widths (unpadded) concatenate to what one pass gives."""
    examples = squad.load_squad("train", limit=40)
    one = squad.featurize(examples, minilm_tokenizer, max_length=192, doc_stride=64, pad_to_max_length=False,
                          with_targets=True)
    monkeypatch.setattr(squad, "FEATURIZE_CHUNK", 7)
    chunked = squad.featurize(examples, minilm_tokenizer, max_length=192, doc_stride=64, pad_to_max_length=False,
                              with_targets=True)
    for name in ("input_ids", "attention_mask", "token_type_ids", "example_index", "offsets", "start_positions",
                 "end_positions"):
        np.testing.assert_array_equal(getattr(one, name), getattr(chunked, name), err_msg=name)


FEATURIZE_CHILD = """
import resource, sys
from transformers import AutoTokenizer
from toolchain.data import squad
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
examples = squad.load_squad("train", limit=int(sys.argv[2]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
f = squad.featurize(examples, tokenizer, max_length=384, doc_stride=128, pad_to_max_length=False, with_targets=True)
arrays = sum(a.nbytes for a in (f.input_ids, f.attention_mask, f.token_type_ids, f.offsets))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, arrays)
"""


def test_featurize_memory_is_bounded(minilm_dir):
    """8,000 train questions at 384: peak memory grows by the arrays and one chunk's tokenizer output, not by the
    tokenizer's Python lists for all of them (measured: arrays 124 MB; chunked +178 MB; one pass +472 MB)."""
    out = subprocess.run([sys.executable, "-c", FEATURIZE_CHILD, minilm_dir, "8000"], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    grown, arrays = map(int, out.stdout.split()[-2:])
    assert grown < arrays + 150e6, (grown / 1e6, arrays / 1e6)


def _copy(folder: Path, dest: Path) -> Path:
    """A copy of an artifact whose graph is a hard link (never edited here) and whose other files are copies."""
    dest.mkdir()
    for f in folder.iterdir():
        (os.link if f.name == "model.onnx" else shutil.copy)(f, dest / f.name)
    return dest


def test_manifest_values_are_checked_against_the_graph(exported_root, tmp_path):
    from toolchain.artifact import artifact
    from toolchain.artifact import manifest as manifests

    folder = tmp_path / "art"
    _copy(exported_root / "fp32-full", folder)
    data = json.loads((folder / artifact.MANIFEST).read_text())
    data["max_positions"] = 1024  # the graph's position table has 512 rows
    (folder / artifact.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(manifests.ManifestError, match="position table has 512 rows"):
        manifests.load(folder)
    data["max_positions"], data["doc_stride"] = 512, 10**30
    (folder / artifact.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(manifests.ManifestError, match="doc_stride must be an integer"):
        manifests.load(folder)
    one_line(cli("verify", folder, "--limit", 2), "doc_stride must be an integer")


def test_symlinks_leading_out_of_an_artifact_are_refused(exported_root, tmp_path):
    from qtool_runtime import Artifact, ArtifactError
    from toolchain.artifact import artifact

    folder = tmp_path / "art"
    _copy(exported_root / "fp32-full", folder)
    outside = tmp_path / "vocab.txt"
    (folder / "vocab.txt").rename(outside)
    (folder / "vocab.txt").symlink_to(outside)  # same bytes, same sha256: only the location is wrong
    with pytest.raises(artifact.ArtifactError, match="'vocab.txt', which is not a file inside the folder"):
        artifact.check_artifact(folder)
    with pytest.raises(ArtifactError, match="'vocab.txt' is outside the folder"):
        Artifact.open(folder)


def test_answer_refuses_undecodable_text_in_one_line(exported_root, tmp_path):
    art = exported_root / "fp32-full"
    # what Python makes of a non-UTF-8 byte on the command line (surrogateescape)
    one_line(cli("answer", art, "--question", "Who \udcff won?", "--context", "Denver won."), "not valid Unicode")
    latin1 = tmp_path / "context.txt"
    latin1.write_bytes("Denver won in M\u00fcnchen.".encode("latin-1"))
    one_line(cli("answer", art, "--question", "Who won?", "--context-file", latin1), f"{latin1} is not UTF-8")
    kit = subprocess.run([sys.executable, "-m", "qtool_runtime", "answer", str(art), "--question", "Who won?",
                          "--context-file", str(latin1)], capture_output=True, text=True)
    assert kit.returncode == 1 and kit.stderr.startswith("Error: ") and "is not UTF-8" in kit.stderr


def test_quantize_refuses_an_unwritable_destination_before_work(exported_root, tmp_path):
    from toolchain.quantize.quantize import quantize_artifact

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        quantize_artifact(exported_root / "fp32-full", blocker / "int8-full", QuantizeSettings(tune=False),
                          log=lambda _: pytest.fail("quantize started work"))


def test_two_writers_finishing_at_once_both_succeed(tmp_path, monkeypatch):
    """The other writer's folder appears between our check and our rename: ours replaces it, no OSError."""
    dest = tmp_path / "art"
    real_replace = os.replace
    raced = []

    def racing_replace(src, dst):
        if Path(dst) == dest and not raced:
            raced.append(1)
            dest.mkdir()
            (dest / "theirs.txt").write_text("other writer")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", racing_replace)
    with atomic.staging_dir(dest) as tmp:
        (tmp / "ours.txt").write_text("this writer")
    assert raced and sorted(p.name for p in dest.iterdir()) == ["ours.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging or .old folders left
