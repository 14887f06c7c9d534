import numpy as np
import onnx
import pytest

from conftest import REDUCED
from toolchain.artifact import artifact
from toolchain.data import squad
from toolchain.artifact import manifest as manifests
from toolchain.graph.export import ExportError, ExportValidationError, export_artifact, export_configs, validate_graph
from toolchain.model.drop_and_restore import LengthConfig, load_qa_model
from toolchain.artifact.interface import GraphError
from toolchain.graph.runtime import onnx_session, predict_onnx, predict_torch
from toolchain.core.settings import ExportSettings

REDUCED_DIR = "fp32-" + REDUCED.replace(",", "-")


def test_export_writes_validated_artifacts(exported_root):
    exported = sorted(p for p in exported_root.iterdir() if p.name.startswith("fp32-"))  # other tests add int8-*
    assert [p.name for p in exported] == sorted(["fp32-full", REDUCED_DIR])
    for folder in exported:
        manifest = manifests.load(folder)
        assert {"model.onnx", "tokenizer.json", "vocab.txt", "tokenizer_config.json"} <= set(manifest.files)
        assert manifest.validation["max_abs_diff"] < 1e-3 and manifest.validation["protocols"] == ["padded", "unpadded", "bucketed"]
        assert manifest.versions["onnxruntime"] and manifest.opset == 18 and manifest.max_positions == 512
    reduced = manifests.load(exported_root / REDUCED_DIR)
    assert reduced.length_config == LengthConfig((300, 250, 200, 150, 120, 100), 384, "cap")
    assert reduced.interface.outputs == ("start_logits", "end_logits", *(f"kept_{i}" for i in range(6)))
    assert reduced.validation["kept_agreement"] == [1.0] * 6
    assert 0.5 < reduced.flops_ratio < 0.8
    assert not manifests.load(exported_root / "fp32-full").is_reduced and reduced.is_reduced


def test_graph_holds_drop_and_restore_ops(exported_root):
    reduced = onnx.load(str(exported_root / REDUCED_DIR / "model.onnx"))
    ops = [n.op_type for n in reduced.graph.node]
    assert ops.count("TopK") == 6 and "ScatterElements" in ops
    # hidden states move by whole rows: no index is expanded to [batch, k, hidden] for an element-wise gather
    expanded = {o for n in reduced.graph.node if n.op_type == "Expand" for o in n.output}
    assert not [n.name for n in reduced.graph.node
                if n.op_type in ("GatherElements", "ScatterElements") and n.input[1] in expanded]
    assert sum(1 for n in reduced.graph.node if n.op_type == "Gather") >= 2 * 6 + 1  # set aside, keep, restore
    names = [n.name for n in reduced.graph.node]
    assert any("layer.5.output.dense/MatMul" in n for n in names)  # nodes named after their modules
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in reduced.graph.node for p in n.metadata_props)
    full = onnx.load(str(exported_root / "fp32-full" / "model.onnx"))
    full_ops = [n.op_type for n in full.graph.node]
    assert "TopK" not in full_ops  # the full configuration is the plain model
    # fuse-attention: the full graph runs each attention core as one node; the reduced one keeps its cores written
    # out, because every layer reads the attention probabilities to rank tokens
    assert full_ops.count("MultiHeadAttention") == 6 and "Softmax" not in full_ops
    assert ops.count("Softmax") == 6 and "MultiHeadAttention" not in ops


@pytest.mark.parametrize("length, batch", [(384, 1), (256, 3)])
def test_graph_scales_with_input_length(exported_root, trained_dir, length, batch):
    """k follows the input length in-graph (cap rule); ONNX matches PyTorch at any length and batch size."""
    model, tokenizer = load_qa_model(trained_dir)
    feats = squad.featurize(squad.load_squad("dev", limit=batch, offset=100), tokenizer, max_length=length)
    feats = squad.Features(*(getattr(feats, f)[:batch] for f in ("input_ids", "attention_mask", "token_type_ids", "example_index", "offsets")))
    config = LengthConfig.parse(REDUCED, 6, 384)
    got = predict_onnx(onnx_session(exported_root / REDUCED_DIR / "model.onnx"), feats)
    want = predict_torch(model, feats, config)
    assert [k.shape[1] for k in got.kept] == [config.keep_count(i, length, length) for i in range(6)]
    real = feats.attention_mask.astype(bool)
    assert np.abs(got.start_logits - want.start_logits)[real].max() < 1e-3


def test_validation_catches_a_wrong_graph(exported_root, trained_dir):
    model, tokenizer = load_qa_model(trained_dir)
    feats = squad.featurize(squad.load_squad("dev", limit=4), tokenizer)
    # the full graph is not what the reduced configuration computes
    with pytest.raises(ExportValidationError, match="differ"):
        validate_graph(exported_root / "fp32-full" / "model.onnx", model, LengthConfig.parse(REDUCED, 6), feats)


def test_failed_export_leaves_nothing(tmp_path, trained_dir, monkeypatch):
    import toolchain.graph.export as export_module

    model, tokenizer = load_qa_model(trained_dir)
    feats = squad.featurize(squad.load_squad("dev", limit=2), tokenizer)

    def broken(*args, **kwargs):
        raise ExportValidationError("simulated mismatch")

    monkeypatch.setattr(export_module, "validate_graph", broken)
    dest = tmp_path / "root" / "fp32-full"
    with pytest.raises(ExportValidationError):
        export_artifact(model, tokenizer, LengthConfig.full(6), dest, feats)
    assert list((tmp_path / "root").iterdir()) == []


def test_corrupt_or_tampered_artifacts_are_detected(exported_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported_root / "fp32-full", copy)
    (copy / "vocab.txt").write_text("tampered")
    with pytest.raises(artifact.ArtifactError, match="vocab.txt does not match"):
        artifact.check_artifact(copy)
    (copy / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(GraphError, match="not a loadable ONNX graph"):
        onnx_session(copy / "model.onnx")
    (copy / "manifest.json").unlink()
    with pytest.raises(artifact.ArtifactError, match="not a qtool artifact"):
        artifact.check_artifact(copy)


def test_manifest_must_describe_its_folder(exported_root, tmp_path):
    """The manifest's opset, graph name and interface are checked against the folder, and its shape is typed."""
    import json
    import shutil

    def tampered(edit):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(exported_root / "fp32-full", copy)
        data = json.loads((copy / "manifest.json").read_text())
        edit(data)
        (copy / "manifest.json").write_text(json.dumps(data))
        return copy

    with pytest.raises(manifests.ManifestError, match="opset 7"):
        manifests.load(tampered(lambda d: d.update(opset=7)))
    with pytest.raises(manifests.ManifestError, match="file name inside the folder"):
        manifests.load(tampered(lambda d: d.update(graph="../elsewhere.onnx")))
    with pytest.raises(manifests.ManifestError, match="not among the checksummed files"):
        manifests.load(tampered(lambda d: d.update(graph="vocab2.onnx")))
    with pytest.raises(manifests.ManifestError, match="field 'interface' is missing"):
        manifests.load(tampered(lambda d: d.pop("interface")))
    with pytest.raises(manifests.ManifestError, match="length rule"):
        manifests.load(tampered(lambda d: d["length_config"].update(rule="half")))
    copy = tampered(lambda d: None)
    (copy / "manifest.json").write_text('["a", "list"]')
    with pytest.raises(artifact.ArtifactError):
        manifests.load(copy)


def test_export_refuses_what_it_cannot_honour(trained_dir, tmp_path):
    with pytest.raises(ExportError, match="outside what the model takes"):
        export_configs(trained_dir, ["full"], tmp_path / "g", settings=ExportSettings(seq_len=1024))
    with pytest.raises(ExportError, match="doc-stride 200 must be"):
        export_configs(trained_dir, ["full"], tmp_path / "g", settings=ExportSettings(seq_len=128, doc_stride=200))
    with pytest.raises(ExportError, match="cannot write opset 7"):
        export_configs(trained_dir, ["full"], tmp_path / "g", settings=ExportSettings(samples=1, opset=7))
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
