"""The deployment kit (runtime/qtool_runtime): same windows and answers as what qtool measures, torch-free.

Artifacts come from the session fixtures (the trained reference model, exported full and reduced); the
questions are a real SQuAD dev slice that includes contexts longer than one window.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

import qtool_runtime
from qtool_runtime import Answer, Artifact, ArtifactError, InputError
from toolchain.data import squad
from toolchain.artifact import manifest as manifests
from toolchain.graph.runtime import onnx_session, predict_onnx

RUNTIME_DIR = Path(qtool_runtime.__file__).resolve().parent.parent  # runtime/: what `pip install ./runtime` takes
DEV_OFFSET, DEV_LIMIT = 230, 50  # dev questions 250-269 have contexts longer than one 384-token window


@pytest.fixture(scope="module")
def kit_examples(squad_dir) -> list[squad.SquadExample]:
    return squad.load_squad("dev", limit=DEV_LIMIT, offset=DEV_OFFSET)


@pytest.fixture(scope="module")
def full_dir(exported_root) -> Path:
    return exported_root / "fp32-full"


@pytest.fixture(scope="module")
def reduced_dir(exported_root) -> Path:
    found = [p for p in exported_root.iterdir() if p.name.startswith("fp32-") and p.name != "fp32-full"]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def hf_tokenizer(full_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(full_dir, local_files_only=True, use_fast=True)


def test_windows_equal_featurize(full_dir, kit_examples, hf_tokenizer):
    """Kit windows == squad.featurize windows (ids, token types, context offsets, count per question)."""
    kit = Artifact.open(full_dir)
    features = squad.featurize(kit_examples, hf_tokenizer, max_length=kit.seq_len, doc_stride=kit.doc_stride,
                               pad_to_max_length=False)
    row = 0
    multi = 0
    for q, example in enumerate(kit_examples):
        windows = kit.windows(example.question, example.context)
        assert int((features.example_index == q).sum()) == len(windows)
        multi += len(windows) > 1
        for ids, types, offsets in zip(windows.input_ids, windows.token_type_ids, windows.offsets):
            n = len(ids)
            assert int(features.attention_mask[row].sum()) == n <= kit.seq_len
            np.testing.assert_array_equal(features.input_ids[row, :n], ids)
            np.testing.assert_array_equal(features.token_type_ids[row, :n], types)
            np.testing.assert_array_equal(features.offsets[row, :n], offsets)
            row += 1
    assert row == len(features)
    assert multi >= 10, "the slice must exercise contexts longer than one window"


@pytest.mark.parametrize("which", ["full", "reduced"])
def test_answers_equal_measured_pipeline(which, full_dir, reduced_dir, kit_examples, hf_tokenizer):
    """What verify scores (predict_onnx unpadded + squad.postprocess) is what the kit answers."""
    folder = full_dir if which == "full" else reduced_dir
    kit = Artifact.open(folder, batch_size=32)
    features = squad.featurize(kit_examples, hf_tokenizer, max_length=kit.seq_len, doc_stride=kit.doc_stride)
    preds = predict_onnx(onnx_session(folder / "model.onnx"), features, protocol="unpadded")
    measured = squad.postprocess(kit_examples, features, preds.start_logits, preds.end_logits,
                                 max_answer_length=kit.max_answer_length)
    answers = kit.answer_batch([(e.question, e.context) for e in kit_examples])
    assert len(answers) == len(kit_examples)
    for example, answer in zip(kit_examples, answers):
        assert answer.text == measured[example.id], example.id
        assert answer.text and example.context[answer.start: answer.end] == answer.text
        assert np.isfinite(answer.score)
    # and the scores agree with the pipeline's: same EM/F1 on the slice
    kit_scores = squad.squad_scores({e.id: a.text for e, a in zip(kit_examples, answers)}, kit_examples)
    assert kit_scores == squad.squad_scores(measured, kit_examples)


def test_long_context_and_batch(reduced_dir, kit_examples, hf_tokenizer):
    """A context of many windows decodes over all of them; a batch answers as each question alone does."""
    kit = Artifact.open(reduced_dir)
    paragraphs = list(dict.fromkeys(e.context for e in kit_examples))
    long_context = "\n".join(paragraphs[:6])
    question = kit_examples[-1].question
    windows = kit.windows(question, long_context)
    assert len(windows) >= 5
    answer = kit.answer(question, long_context)
    assert long_context[answer.start: answer.end] == answer.text != ""
    # the measured pipeline on the same long example finds the same span
    example = squad.SquadExample("long", "", question, long_context, (), ())
    features = squad.featurize([example], hf_tokenizer, max_length=kit.seq_len, doc_stride=kit.doc_stride)
    preds = predict_onnx(onnx_session(reduced_dir / "model.onnx"), features, protocol="unpadded")
    assert squad.postprocess([example], features, preds.start_logits, preds.end_logits)["long"] == answer.text

    pairs = [(e.question, e.context) for e in kit_examples[::5]] + [(question, long_context)]
    runs = []
    real_run = kit.session.run
    kit.session.run = lambda names, feed: runs.append(feed["input_ids"].shape) or real_run(names, feed)
    batch = kit.answer_batch(pairs)
    kit.session.run = real_run
    windows = sum(len(kit.windows(q, c)) for q, c in pairs)
    assert kit.describe()["windows_per_run"] == 16 and len(runs) == -(-windows // 16)  # windows of all questions share runs
    for (q, c), got in zip(pairs, batch):
        alone = kit.answer(q, c)
        assert (got.text, got.start, got.end) == (alone.text, alone.start, alone.end)
        assert got.score == pytest.approx(alone.score, abs=1e-3)


def test_refuses_bad_input(full_dir, kit_examples):
    kit = Artifact.open(full_dir)
    context = kit_examples[0].context
    for question, message in [("", "question is empty"), ("   ", "question is empty")]:
        with pytest.raises(InputError, match=message):
            kit.answer(question, context)
    with pytest.raises(InputError, match="context is empty"):
        kit.answer("What?", " \n")
    # the longest question that still leaves room for context in a window answers; one token more is refused
    longest = " ".join(["word"] * kit.max_question_tokens)
    short = "Denver won Super Bowl 50 in Santa Clara."
    assert isinstance(kit.answer(longest, short), Answer)
    with pytest.raises(InputError, match=f"may have at most {kit.max_question_tokens}"):
        kit.answer(longest + " word", short)


def _copy(folder: Path, dest: Path) -> Path:
    """A copy of an artifact whose graph is a hard link (the 90 MB graph is never edited here; a symlink would
    lead outside the folder, which is refused)."""
    dest.mkdir()
    for f in folder.iterdir():
        if f.name == "model.onnx":
            os.link(f, dest / f.name)
        else:
            shutil.copy(f, dest / f.name)
    return dest


def test_refuses_altered_or_misdescribed_artifacts(full_dir, tmp_path):
    altered = _copy(full_dir, tmp_path / "altered")
    with open(altered / "vocab.txt", "a") as fh:
        fh.write("extra\n")
    with pytest.raises(ArtifactError, match="vocab.txt does not match its sha256"):
        Artifact.open(altered)

    def edited(name: str, change) -> Path:
        folder = _copy(full_dir, tmp_path / name)
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    cases = {
        "stride": (lambda m: m.update(doc_stride=m["length_config"]["seq_len"]), "doc_stride"),
        "positions": (lambda m: m.update(max_positions=100), "exceeds max_positions"),
        "graph": (lambda m: m.update(graph="../model.onnx"), "file name inside the folder"),
        "iface": (lambda m: m["interface"].update(inputs=["input_ids", "attention_mask"]), "is not the graph's"),
        "outputs": (lambda m: m["interface"].update(outputs=["end_logits", "start_logits"]), "must start with"),
        "format": (lambda m: m.update(format="other/9"), "unknown format"),
        "missing": (lambda m: m["files"].update({"extra.bin": "0" * 64}), "extra.bin is listed in the manifest but missing"),
        # numbers the graph cannot take: refused at open, never a traceback mid-request
        "seq_len": (lambda m: (m.update(max_positions=1024), m["length_config"].update(seq_len=1024, keep=[1024] * 6)),
                    "the graph's position table has 512 rows"),  # read from the graph, before any run
        "huge": (lambda m: m.update(doc_stride=10**30), "must be an integer in 1..65536"),
        "answer": (lambda m: m.update(max_answer_length=10**4), "must be an integer in|exceeds the sequence length"),
    }
    for name, (change, message) in cases.items():
        with pytest.raises(ArtifactError, match=message):
            Artifact.open(edited(name, change))


def test_kit_imports_without_torch(reduced_dir, kit_examples):
    """Opening and answering never imports torch or transformers (checked in a clean interpreter)."""
    e = kit_examples[0]
    code = (
        "import sys, json; from qtool_runtime import Artifact; "
        f"a = Artifact.open({str(reduced_dir)!r}).answer({e.question!r}, {e.context!r}); "
        "print(json.dumps([a.text, sorted(m for m in ('torch', 'transformers', 'toolchain', 'click') if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    text, imported = json.loads(out.stdout)
    assert imported == [] and text


@pytest.mark.skipif(os.environ.get("QTOOL_SKIP_VENV_TEST") == "1", reason="QTOOL_SKIP_VENV_TEST=1")
def test_runtime_installs_alone_and_answers(reduced_dir, kit_examples, tmp_path):
    """`pip install ./runtime` into a fresh venv: no torch there, and a real artifact answers a real question."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    source = shutil.copytree(RUNTIME_DIR, tmp_path / "runtime",
                             ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
                   check=True, timeout=300, env=env, capture_output=True)
    e = kit_examples[25]
    script = tmp_path / "answer.py"
    script.write_text(
        "import importlib.util, json, sys\n"
        "from qtool_runtime import Artifact\n"
        "a = Artifact.open(sys.argv[1]).answer(sys.argv[2], sys.argv[3])\n"
        "print(json.dumps({**a.to_dict(), 'torch': importlib.util.find_spec('torch') is not None,\n"
        "                  'transformers': importlib.util.find_spec('transformers') is not None}))\n"
    )
    out = subprocess.run([str(python), str(script), str(reduced_dir), e.question, e.context], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env, check=True)
    got = json.loads(out.stdout)
    assert got["torch"] is False and got["transformers"] is False
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    assert got["text"] and e.context[got["start"]: got["end"]] == got["text"]
    here = Artifact.open(reduced_dir).answer(e.question, e.context)
    assert (got["text"], got["start"], got["end"]) == (here.text, here.start, here.end)


def test_postprocess_uses_the_kit_decoder():
    """One span decoder: qtool's scoring calls the one the kit ships (no second copy to drift)."""
    assert squad.best_span is qtool_runtime.best_span


def test_retired_ratio_graphs_are_refused_in_one_line(full_dir, reduced_dir, tmp_path):
    """An artifact that drops tokens under the retired `ratio` rule is refused by the kit and the toolchain with one
    line saying what to do; a full graph drops nothing, so its old rule does not matter and it still runs."""
    from qtool_runtime.contract import RATIO_RETIRED

    def ratio(m):
        m["length_config"]["rule"] = "ratio"

    old = _edited(reduced_dir, tmp_path / "reduced", ratio)
    with pytest.raises(ArtifactError, match="length rule 'ratio' is retired") as refused:
        Artifact.open(old)
    assert RATIO_RETIRED in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(manifests.ManifestError, match="length rule 'ratio' is retired"):
        manifests.load(old)
    full = Artifact.open(_edited(full_dir, tmp_path / "full", ratio))
    assert not full.pad_to_seq_len and full.answer("Who?", "Ann went home.").text


def test_feeding_rule_follows_quantization_and_variant(full_dir, tmp_path):
    """Dynamic INT8 runs one window at a time; static INT8 and FP32 batch; LAT graphs are padded to seq_len.
    A manifest whose recorded feeding contradicts that is refused."""
    from qtool_runtime.kit import check_manifest, feeding

    base = json.loads((full_dir / "manifest.json").read_text())
    reduced = {**base, "length_config": {**base["length_config"], "keep": [300, 250, 200, 150, 120, 100]}}
    for quant, variant, want in [(None, "qtool", (True, False)), ({"mode": "static"}, "qtool", (True, False)),
                                 ({"mode": "dynamic"}, "qtool", (False, False)), ({"mode": "static"}, "lat", (True, True))]:
        m = {**reduced, "quantization": quant, "length_config": {**reduced["length_config"], "variant": variant}}
        m.pop("feeding", None)
        assert feeding(m) == want, (quant, variant)
    assert base["feeding"] == {"batchable": True, "pad_to_seq_len": False}  # what export wrote
    lying = _copy(full_dir, tmp_path / "lying")
    m = json.loads((lying / "manifest.json").read_text())
    m["quantization"] = {"mode": "dynamic"}
    (lying / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="contradicts the graph's quantization"):
        check_manifest(lying)


def _edited(src: Path, dest: Path, change) -> Path:
    """A copy of artifact `src` (graph hard-linked) whose manifest `change` edited in place."""
    folder = _copy(src, dest)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def routed_dir(full_dir, reduced_dir, tmp_path_factory) -> Path:
    """The FP32 full and reduced graphs routed at 100 tokens (toolchain.graph.route; the threshold given, so nothing timed)."""
    from toolchain.graph.route import route_artifacts

    return route_artifacts(full_dir, reduced_dir, tmp_path_factory.mktemp("routed") / "fp32-routed", full_up_to=100,
                           log=lambda _: None)


def _route(threshold, fmt: str = "qtool-artifact/2"):
    def change(m: dict) -> None:
        m["format"] = fmt
        if threshold is None:
            m["length_config"].pop("full_up_to", None)
        else:
            m["length_config"]["full_up_to"] = threshold
    return change


def test_the_kit_reads_the_graph_and_refuses_a_manifest_that_disagrees(full_dir, reduced_dir, routed_dir, tmp_path):
    """The opset, a routed graph's threshold and the position table are read from the graph itself; a manifest that
    says otherwise (edited, or of an older format that had no threshold) is refused in one line."""
    kit = Artifact.open(routed_dir)
    assert kit.full_up_to == 100 and kit.label(None).endswith("(full up to 100)")
    cases = [
        (routed_dir, "routed-200", _route(200), "manifest says full_up_to 200 .* routes windows of at most 100 tokens"),
        (routed_dir, "routed-older", _route(None, "qtool-artifact/1"), "manifest says full_up_to 0 .* at most 100 tokens"),
        (reduced_dir, "unrouted", _route(200), "manifest says full_up_to 200 .* the graph is not routed"),
        (full_dir, "opset", lambda m: m.update(opset=24), "manifest says opset 24, the graph has opset 18"),
        (full_dir, "opset-huge", lambda m: m.update(opset=10**30), "opset must be an integer in 1..65536"),
        (full_dir, "opset-text", lambda m: m.update(opset="18"), "opset must be an integer in 1..65536, got '18'"),
        (full_dir, "opset-missing", lambda m: m.pop("opset"), "opset must be an integer in 1..65536, got None"),
        (full_dir, "positions", lambda m: m.update(max_positions=600), "position table has 512 rows"),
        (reduced_dir, "full-up-to-text", _route("100"), "full_up_to must be 0 or a token count below seq_len 384"),
        (reduced_dir, "full-up-to-float", _route(100.5), "full_up_to must be 0 or a token count"),
        (reduced_dir, "full-up-to-bool", _route(True), "full_up_to must be 0 or a token count"),
    ]
    for src, name, change, message in cases:
        with pytest.raises(ArtifactError, match=message) as caught:
            Artifact.open(_edited(src, tmp_path / name, change))
        assert "\n" not in str(caught.value)


def test_labels_are_what_the_graph_runs(full_dir, reduced_dir, tmp_path):
    """A reduced graph reports how many tokens each layer kept: on a full window they must be the manifest's counts,
    so an edited `keep` cannot relabel answers; a full graph reports none, so it cannot claim to drop tokens."""
    assert Artifact.open(reduced_dir).label(None) == "300,250,200,150,120,100"
    keep = lambda counts: lambda m: m["length_config"].update(keep=counts)  # noqa: E731
    with pytest.raises(ArtifactError, match=r"the graph keeps \[300, 250, 200, 150, 120, 100\] tokens per layer"):
        Artifact.open(_edited(reduced_dir, tmp_path / "keep", keep([300, 250, 200, 150, 120, 99])))
    with pytest.raises(ArtifactError, match="kept_i output per layer, a full graph none"):
        Artifact.open(_edited(full_dir, tmp_path / "full", keep([300, 250, 200, 150, 120, 100])))


def test_corrupt_manifests_and_tokenizers_are_one_line(full_dir, tmp_path):
    """What used to end in a traceback (deep JSON, a stride the tokenizer refuses) or a 500 on every request (ids past
    the graph's word table) is refused at open, in one line."""
    from qtool_runtime.contract import sha256
    from tokenizers import Tokenizer

    deep = _copy(full_dir, tmp_path / "deep")
    (deep / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nests JSON too deeply"):
        Artifact.open(deep)
    stride = _edited(full_dir, tmp_path / "stride", lambda m: m.update(doc_stride=383))
    with pytest.raises(ArtifactError, match="doc_stride 383 leaves no room for a question in windows of 384 tokens"):
        Artifact.open(stride)
    precision = _edited(full_dir, tmp_path / "precision", lambda m: m.update(float_precision="bf16"))
    with pytest.raises(ArtifactError, match="float_precision 'bf16' is not one of \\('fp32', 'runtime-default'\\)"):
        Artifact.open(precision)
    vocab = _copy(full_dir, tmp_path / "vocab")
    tokenizer = Tokenizer.from_file(str(vocab / "tokenizer.json"))
    tokenizer.add_tokens(["qtoolnewword"])  # id 30522: one past the graph's word table
    tokenizer.save(str(vocab / "tokenizer.json"))
    manifest = json.loads((vocab / "manifest.json").read_text())
    manifest["files"]["tokenizer.json"] = sha256(vocab / "tokenizer.json")
    (vocab / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="token ids up to 30522, the graph's word table only 30522 rows"):
        Artifact.open(vocab)
    result = subprocess.run([sys.executable, "-m", "qtool_runtime", "answer", str(stride), "--question", "Who?",
                             "--context", "Denver won."], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("Error: ") and "doc_stride 383" in result.stderr
