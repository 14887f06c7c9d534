"""Routed graphs: the full static INT8 graph on short windows, the reduced one on long windows, in one graph."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import REDUCED
from qtool_runtime import Artifact
from qtool_runtime.contract import length_runs
from toolchain.artifact import manifest as manifests
from toolchain.data import squad
from toolchain.core.settings import QuantizeSettings
from toolchain.quantize.recipes import QuantizationError
from toolchain.quantize.quantize import quantize_artifact
from toolchain.core.crossover import Crossover
from toolchain.graph.route import PAD_LOGIT, RouteError, route_artifacts
from toolchain.graph.runtime import Protocol, onnx_session, predict_onnx

REDUCED_NAME = REDUCED.replace(",", "-")


@pytest.fixture(scope="module")
def static_pair(exported_root, tmp_path_factory) -> tuple:
    """Static INT8 graphs (one recipe, calibrated on 16 windows) of the test model's full and reduced configurations."""
    root = tmp_path_factory.mktemp("route")
    recipe = ("static-fp32-out",)
    settings = QuantizeSettings(samples=16, tune=False, recipes=recipe)
    full, reduced = (quantize_artifact(exported_root / f"fp32-{name}", root / f"int8-{name}", settings, log=lambda _: None)
                     for name in ("full", REDUCED_NAME))
    return full, reduced


@pytest.fixture(scope="module")
def dev_windows(minilm_tokenizer, dev_examples):
    return squad.featurize(dev_examples, minilm_tokenizer, max_length=384, doc_stride=128)


def test_the_full_static_int8_graph_runs_one_qattention_per_layer(static_pair):
    full, reduced = static_pair
    ops = [n.op_type for n in onnx.load(str(full / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("QAttention") == 6 and "MultiHeadAttention" not in ops and ops.count("MatMulIntegerToFloat") == 6 * 3 + 1
    reduced_graph = onnx.load(str(reduced / "model.onnx"), load_external_data=False)
    reduced_ops = [n.op_type for n in reduced_graph.graph.node]
    # its layers read the probabilities: ONNX Attention writes them, under an If that checks right padding
    assert "QAttention" not in reduced_ops and "Softmax" not in reduced_ops and reduced_ops.count("If") == 6
    assert {o.version for o in reduced_graph.opset_import if o.domain == ""} == {24}


def test_the_kit_refuses_an_opset_24_graph_under_an_onnxruntime_that_ignores_key_lengths(static_pair, monkeypatch):
    import onnxruntime

    from qtool_runtime.kit import ArtifactError

    full, reduced = static_pair
    monkeypatch.setattr(onnxruntime, "__version__", "1.24.4")
    with pytest.raises(ArtifactError, match="opset 24 .* install onnxruntime>=1.25"):
        Artifact.open(reduced)
    Artifact.open(full)  # opset 18: fine under 1.24


def test_ranking_layers_as_one_attention_answer_real_windows_as_the_written_out_layers(exported_root, dev_windows):
    """The reduced FP32 graph before and after fuse-ranking-attention, on real dev windows: length-bucketed batches
    (right-padded: the fused cores run) and the same batches with a question token masked out (not right-padded:
    the written-out cores run); logits of real tokens agree."""
    import onnxruntime as ort

    from toolchain.graph.passes import FUSE_RANKING_ATTENTION, run_passes

    path = exported_root / f"fp32-{REDUCED_NAME}" / "model.onnx"
    fused = run_passes(onnx.load(str(path)), [FUSE_RANKING_ATTENTION]).model
    guards = {n.input[0] for n in fused.graph.node if n.op_type == "If"}
    assert len(guards) == 1 and sum(n.op_type == "If" for n in fused.graph.node) == 6
    fused.graph.output.append(onnx.helper.make_tensor_value_info(guards.pop(), onnx.TensorProto.BOOL, []))
    sessions = onnx_session(path), ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    lengths = dev_windows.attention_mask.sum(1)
    order = np.argsort(lengths)
    for rows in (order[:4], order[-4:], order[len(order) // 2: len(order) // 2 + 3]):
        width = int(lengths[rows].max())
        feed = {"input_ids": dev_windows.input_ids[rows, :width], "attention_mask": dev_windows.attention_mask[rows, :width],
                "token_type_ids": dev_windows.token_type_ids[rows, :width]}
        holed = dict(feed, attention_mask=feed["attention_mask"].copy())
        holed["attention_mask"][0, 2] = 0
        for batch, fast in ((feed, True), (holed, False)):
            *got, took_fused = sessions[1].run(["start_logits", "end_logits", fused.graph.output[-1].name], batch)
            want = sessions[0].run(["start_logits", "end_logits"], batch)
            assert bool(took_fused) is fast
            real = batch["attention_mask"] > 0
            for g, w in zip(got, want):
                np.testing.assert_allclose(g[real], w[real], atol=1e-4)


def test_a_routed_graph_answers_each_window_as_its_branch_does(static_pair, dev_windows, tmp_path):
    """Real dev windows on both sides of the threshold, bucketed as the kit runs them, alone, and padded to 384: a
    window of at most full_up_to tokens gets the full graph's logits, a longer one the reduced graph's."""
    full, reduced = static_pair
    lengths = dev_windows.attention_mask.sum(1)
    threshold = int(np.median(lengths))
    assert (lengths <= threshold).any() and (lengths > threshold).any()
    routed = route_artifacts(full, reduced, tmp_path / "routed", full_up_to=threshold, log=lambda _: None)
    manifest = manifests.load(routed)
    assert manifest.length_config.full_up_to == threshold and manifest.invariant and manifest.is_reduced
    assert manifest.route["full"]["folder"] == full.name and manifest.validation["max_abs_diff_vs_branch"] < 1e-4
    assert manifest.length_config.label == f"{REDUCED} (full up to {threshold})"
    import json

    from qtool_runtime.errors import QtoolError

    stated = json.loads((routed / "manifest.json").read_text())
    assert stated["format"] == "qtool-artifact/2"  # kits that do not know the threshold must refuse it
    (routed / "manifest.json").write_text(json.dumps({**stated, "format": "qtool-artifact/1"}))
    with pytest.raises(QtoolError, match="unknown format"):
        Artifact.open(routed)
    (routed / "manifest.json").write_text(json.dumps(stated))

    def logits(folder, protocol, full_up_to=0):
        p = predict_onnx(onnx_session(folder / "model.onnx"), dev_windows, protocol=protocol, invariant=True,
                         full_up_to=full_up_to)
        return p.start_logits, p.end_logits

    branches = {name: logits(folder, Protocol.UNPADDED) for name, folder in (("full", full), ("reduced", reduced))}
    short = lengths <= threshold
    for protocol in (Protocol.BUCKETED, Protocol.UNPADDED):
        got = logits(routed, protocol, threshold)
        for row, n in enumerate(lengths):
            want = branches["full" if short[row] else "reduced"]
            for g, w in zip(got, want):
                np.testing.assert_allclose(g[row, :n], w[row, :n], atol=1e-4)
    session = onnx_session(routed / "model.onnx")
    row = int(np.flatnonzero(short)[0])
    padded = {k: v[row:row + 1] for k, v in dev_windows.model_inputs(np.arange(len(lengths))).items()}
    assert padded["input_ids"].shape[1] == 384
    start = session.run(["start_logits"], padded)[0]
    np.testing.assert_allclose(start[0, :lengths[row]], branches["full"][0][row, :lengths[row]], atol=1e-4)
    assert np.all(start[0, lengths[row]:] == PAD_LOGIT)


def test_the_kit_never_batches_windows_across_the_threshold(static_pair, tmp_path):
    full, reduced = static_pair
    assert length_runs([5, 1, 9, 3, 7], 2, threshold=4) == [[1, 3], [0, 4], [2]]
    assert length_runs([5, 1, 9, 3, 7], 2) == [[1, 3], [0, 4], [2]] and length_runs([5, 1, 9], 2, sort=False) == [[0, 1], [2]]
    assert length_runs([5, 1, 9, 3, 7], 3, threshold=5) == [[1, 3, 0], [4, 2]]
    routed = route_artifacts(full, reduced, tmp_path / "routed", full_up_to=120, log=lambda _: None)
    kit = Artifact.open(routed, batch_size=8)
    context = " ".join(["The Normans gave their name to Normandy, a region in France."] * 24)
    pairs = [("Who gave their name to Normandy?", context[:length]) for length in (200, 500, 1000, 1400, 100)]
    lengths = [len(w) for q, c in pairs for w in kit.windows(q, c).input_ids]
    assert min(lengths) <= 120 < max(lengths)
    together = kit.answer_batch(pairs)
    alone = [kit.answer_batch([pair])[0] for pair in pairs]
    assert [(a.text, round(a.score, 4)) for a in together] == [(a.text, round(a.score, 4)) for a in alone]


def test_route_refuses_pairs_it_cannot_join_and_quantize_refuses_a_routed_graph(static_pair, exported_root, tmp_path):
    full, reduced = static_pair
    with pytest.raises(RouteError, match="--full must be a full graph"):
        route_artifacts(reduced, reduced, tmp_path / "a", full_up_to=100, log=lambda _: None)
    with pytest.raises(RouteError, match="differ in precision"):
        route_artifacts(exported_root / "fp32-full", reduced, tmp_path / "b", full_up_to=100, log=lambda _: None)
    with pytest.raises(RouteError, match="between 1 and 383"):
        route_artifacts(full, reduced, tmp_path / "c", full_up_to=384, log=lambda _: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    fp32 = route_artifacts(exported_root / "fp32-full", exported_root / f"fp32-{REDUCED_NAME}", tmp_path / "fp32-routed",
                           full_up_to=100, log=lambda _: None)
    with pytest.raises(QuantizationError, match="routed graph"):
        quantize_artifact(fp32, tmp_path / "int8-routed", QuantizeSettings(samples=4, tune=False,
                                                                           recipes=("static-fp32-out",)), log=lambda _: None)


def test_the_crossover_is_the_longest_length_the_full_graph_holds_before_the_reduced_one_wins():
    widths = (96, 128, 160, 192, 224)
    assert Crossover(widths, (5, 6, 7, 8, 9), (6, 7, 7.5, 7, 8)).full_up_to == 160
    assert Crossover(widths, (5, 6, 7, 8, 9), (4, 5, 6, 7, 8)).full_up_to == 0  # reduced wins everywhere
    assert Crossover(widths, (5, 6, 7, 8, 9), (6, 5, 8, 7, 8)).full_up_to == 160  # a later win by the full graph resets


def test_verify_times_a_routed_graph_on_batches_that_never_straddle_its_threshold(dev_windows):
    from toolchain.evaluate.verify import _workload

    lengths = dev_windows.attention_mask.sum(1)
    threshold = int(np.median(lengths))
    single, plain, _ = _workload(dev_windows, 64)
    _, routed, _ = _workload(dev_windows, 64, threshold)
    assert sum(b["input_ids"].shape[0] for b in routed) == len(single) == sum(b["input_ids"].shape[0] for b in plain)
    def sides(batches):
        return [{bool(n <= threshold) for n in b["attention_mask"].sum(1)} for b in batches]

    assert all(len(side) == 1 for side in sides(routed)) and any(len(side) == 2 for side in sides(plain))


def test_qtool_route_writes_the_artifact_or_one_error_line(static_pair, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli.commands import main

    full, reduced = static_pair
    out = tmp_path / "cli-routed"
    result = CliRunner().invoke(main, ["route", "--full", str(full), "--reduced", str(reduced), "--full-up-to", "200",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and f"routed artifact: {out}" in result.output
    assert manifests.load(out).length_config.full_up_to == 200 and manifests.load(out).route["crossover"] is None
    bad = CliRunner().invoke(main, ["route", "--full", str(reduced), "--reduced", str(reduced), "--full-up-to", "200",
                                    "--out", str(tmp_path / "bad")], catch_exceptions=False)
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == ["Error: --full must be a full graph (every layer keeps every token)"]
    assert not (tmp_path / "bad").exists()


def _files(folder) -> dict[str, str]:
    """Every path under `folder` (a folder as 'dir', a file as its sha256): what 'untouched, byte for byte' compares."""
    import hashlib

    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def _route_cli(full, reduced, out, full_up_to: int = 200):
    from click.testing import CliRunner

    from toolchain.cli.commands import main

    return CliRunner().invoke(main, ["route", "--full", str(full), "--reduced", str(reduced), "--full-up-to",
                                     str(full_up_to), "--out", str(out)], catch_exceptions=False)


def test_route_out_never_replaces_an_input_or_a_users_folder(static_pair, tmp_path):
    """The tester's reproduction: --out at a user's folder, at the artifact root holding the inputs, at --full and
    inside --reduced. Each is refused in one line (exit 1) before any work, and every file stays as it was."""
    import shutil

    root = tmp_path / "X"
    full, reduced = (Path(shutil.copytree(p, root / p.name)) for p in static_pair)
    user = tmp_path / "Y"
    user.mkdir()
    (user / "a.txt").write_text("keep")
    before = _files(tmp_path)
    for out, message in ((user, f"--out {user} is a non-empty folder that is not a routed artifact"),
                         (root, f"--out {root} holds --full {full}"),
                         (full, f"--out {full} is --full"),
                         (reduced, f"--out {reduced} is --reduced"),
                         (reduced / "sub", f"--out {reduced / 'sub'} is inside --reduced {reduced}")):
        result = _route_cli(full, reduced, out)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(f"Error: {message}"), result.output
    assert _files(tmp_path) == before and (user / "a.txt").read_text() == "keep"


def test_route_writes_a_new_or_empty_folder_and_replaces_only_a_routed_artifact(static_pair, tmp_path):
    import shutil

    full, reduced = static_pair
    out = tmp_path / "routed"
    assert _route_cli(full, reduced, out).exit_code == 0  # a new folder
    assert _route_cli(full, reduced, out, full_up_to=150).exit_code == 0  # re-running replaces its own output
    assert manifests.load(out).length_config.full_up_to == 150
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _route_cli(full, reduced, empty).exit_code == 0 and manifests.load(empty).route
    other = Path(shutil.copytree(reduced, tmp_path / "int8-other"))  # an artifact, but not a routed one
    before = _files(other)
    result = _route_cli(full, reduced, other)
    assert result.exit_code == 1 and "is a non-empty folder that is not a routed artifact" in result.output
    assert _files(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "int8-other", "routed"]  # no staging leftovers
