"""Bad input and interruptions: atomic writes, SIGTERM cleanup, checkpoints that are not QA models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolchain.artifact import artifact
from toolchain.core import atomic
from toolchain.artifact.output import OutputKind


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_staging_dir_replaces_dest_only_on_success(tmp_path):
    dest = tmp_path / "art"
    with atomic.staging_dir(dest) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (dest / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic.staging_dir(dest) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("failed half way")
    assert (dest / "a.txt").read_text() == "one"  # the previous version survives a failed rewrite
    with atomic.staging_dir(dest) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging or .old folders left


def test_atomic_files_and_folders_get_normal_permissions(tmp_path, umask_022):
    with artifact.staging(tmp_path / "art", OutputKind.FP32_ARTIFACT) as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
        artifact.write_manifest(tmp, {})
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755  # tempfile.mkdtemp would give 0o700
    assert (tmp_path / "art" / artifact.MANIFEST).stat().st_mode & 0o777 == 0o644
    atomic.write_text(tmp_path / "t.json", "{}")
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "t.json"]


def test_sigterm_in_process_cleans_up_and_restores_the_handler(tmp_path):
    def previous(signum, frame):  # pragma: no cover - never called
        pass

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit) as info:
            with atomic.staging_dir(tmp_path / "art") as tmp:
                (tmp / "big.bin").write_bytes(b"0" * 1000)
                assert signal.getsignal(signal.SIGTERM) is not previous
                os.kill(os.getpid(), signal.SIGTERM)
        assert info.value.code == 143
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


STAGING_CHILD = textwrap.dedent(
    """
    import sys, time
    from toolchain.artifact import artifact
    from toolchain.artifact.output import OutputKind
    with artifact.staging(sys.argv[1], OutputKind.FP32_ARTIFACT) as tmp:
        (tmp / "model.onnx").write_bytes(b"0" * 100000)
        print(tmp, flush=True)
        time.sleep(60)
    """
)


def test_sigterm_during_staging_leaves_nothing_behind(tmp_path):
    """`kill` (SIGTERM) of a process that is writing an artifact: no staging folder, no artifact, exit 143."""
    dest = tmp_path / "graphs" / "fp32-full"
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGING_CHILD, str(dest)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        staged = Path(proc.stdout.readline().strip())
        assert staged.is_dir() and staged.name.startswith(".fp32-full.")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
        proc.wait()
    assert not staged.exists()
    assert list(dest.parent.iterdir()) == []


def test_find_artifacts_skips_staging_leftovers(tmp_path):
    for name in ("fp32-full", ".fp32-x.1a2b3c4d.tmp", ".int8-y.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / artifact.MANIFEST).write_text(json.dumps({"format": artifact.FORMAT}))
    assert artifact.find_artifacts(tmp_path) == [tmp_path / "fp32-full"]
    (tmp_path / "fp32-full" / artifact.MANIFEST).unlink()
    with pytest.raises(artifact.ArtifactError, match="holds no qtool artifacts"):
        artifact.find_artifacts(tmp_path)


def _tiny_bert(cls, folder: Path, tokenizer=None) -> Path:
    """A small randomly initialised BERT of class `cls` saved like a real checkpoint."""
    import torch
    from transformers import BertConfig

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        vocab_size=30522, max_position_embeddings=128)
    cls(config).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", ["BertModel", "BertForSequenceClassification"])
def test_checkpoint_without_qa_head_is_refused(tmp_path, minilm_tokenizer, head):
    """transformers would silently add a random QA head; load_qa_model names the missing weights instead."""
    import transformers

    from toolchain.model.drop_and_restore import UnsupportedModelError, load_qa_model

    folder = _tiny_bert(getattr(transformers, head), tmp_path / head, minilm_tokenizer)
    with pytest.raises(UnsupportedModelError, match=r"qa_outputs.bias, qa_outputs.weight were not in the checkpoint"):
        load_qa_model(folder)


def test_qa_checkpoint_loads_with_its_own_head(tmp_path, minilm_tokenizer, dev_examples):
    import torch
    from safetensors.torch import load_file
    from transformers import BertForQuestionAnswering

    from toolchain.data import squad
    from toolchain.model.drop_and_restore import drop_and_restore, load_qa_model

    folder = _tiny_bert(BertForQuestionAnswering, tmp_path / "qa", minilm_tokenizer)
    model, tokenizer = load_qa_model(folder)
    saved = load_file(folder / "model.safetensors")
    assert torch.equal(model.qa_outputs.weight, saved["qa_outputs.weight"])  # the saved head, not a new one
    feats = squad.featurize(dev_examples[:2], tokenizer, max_length=128, doc_stride=64)
    with torch.no_grad():
        start, _ = drop_and_restore(model, **{k: torch.from_numpy(v) for k, v in feats.model_inputs().items()})
    assert start.shape == feats.input_ids.shape


def test_model_folder_without_tokenizer_or_weights_is_a_clear_error(tmp_path, minilm_tokenizer):
    from transformers import BertForQuestionAnswering

    from toolchain.model.drop_and_restore import load_qa_model

    folder = _tiny_bert(BertForQuestionAnswering, tmp_path / "qa")
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        load_qa_model(folder)
    minilm_tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights"):
        load_qa_model(folder)


@pytest.mark.parametrize("files, message", [
    (None, "must map file names"), ([], "must map file names"), ({"model.onnx": 3}, "must map file names"),
    ({"../outside.onnx": "00"}, "not a file inside the folder"), ({"/etc/passwd": "00"}, "not a file inside the folder"),
])
def test_manifest_files_of_the_wrong_shape_are_refused(tmp_path, files, message):
    folder = tmp_path / "art"
    with artifact.staging(folder, OutputKind.FP32_ARTIFACT) as tmp:
        (tmp / artifact.GRAPH).write_bytes(b"graph")
        artifact.write_manifest(tmp, {})
    data = json.loads((folder / artifact.MANIFEST).read_text())
    if files is None:
        data.pop("files")
    else:
        data["files"] = files
    (folder / artifact.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.check_artifact(folder)


def test_unwritable_destinations_are_refused_before_work(tmp_path):
    """An --out below a file fails in one line before any model is loaded (the model path does not even exist)."""
    from click.testing import CliRunner

    from toolchain.cli.commands import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "no-model"), "--config", "full",
                                       "--out", str(blocker / "graphs")])
    assert result.exit_code == 1 and "is not a folder" in result.output and "Traceback" not in result.output
    with pytest.raises(NotADirectoryError):
        atomic.check_writable_dir(blocker / "sub" / "deeper")
    assert atomic.check_writable_dir(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"

