"""Ranking ties and near ties: PyTorch and the exported graph order tokens the same way, and export's validation
tells a near tie broken the other way from a wrong graph."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import REDUCED
from toolchain.data import squad
from toolchain.graph.export import ExportValidationError, validate_graph
from toolchain.model.drop_and_restore import MATCH_FIRST, _drop, _ranked, load_qa_model
from toolchain.graph.runtime import Predictions, near_tie_flips
from qtool_runtime.contract import Variant

REDUCED_DIR = "fp32-" + REDUCED.replace(",", "-")


def _onnx_topk_order(score: np.ndarray) -> np.ndarray:
    """What onnxruntime's TopK (the exported graph's ranking) returns for `score`."""
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=1, sorted=1)
    graph = helper.make_graph([node], "topk", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, score.shape),
                                               helper.make_tensor_value_info("k", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("v", TensorProto.DOUBLE, None),
                               helper.make_tensor_value_info("i", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["i"], {"x": score, "k": np.array([score.shape[1]], np.int64)})[0]


def test_equal_scores_keep_their_order_in_pytorch_and_onnxruntime():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 4, size=(8, 300)).astype(np.float64)  # every row full of exact ties
    ours = _ranked(torch.from_numpy(score)).numpy()
    assert (ours == _onnx_topk_order(score)).all()
    first = ours[0]
    for value in np.unique(score[0]):  # within a tie, the lower index first
        same = [int(i) for i in first if score[0, i] == value]
        assert same == sorted(same)


def test_match_bonus_keeps_small_attention_differences():
    """Near tokens whose attention differs by 1e-4 rank by attention (float32 scores would round both to one value)."""
    n, heads = 6, 2
    received = torch.tensor([[0.0, 3.0, 3.0001, 3.0002, 1.0, 2.0]])  # what each token receives, summed
    probs = torch.zeros(1, heads, n, n)
    probs[0, 0, 0] = received[0]  # one real query carries it all
    mask = torch.ones(1, n)
    positions = torch.arange(n).unsqueeze(0)
    near = torch.tensor([[False, True, True, True, False, False]])
    h = torch.arange(n, dtype=torch.float32).view(1, n, 1)
    kept, _, kept_positions, _ = _drop(h, h, probs, mask, positions, n, 3, Variant.MATCH, near=near)
    assert kept_positions.tolist() == [[3, 2, 1]]
    assert float(np.float32(3.0001) + np.float32(MATCH_FIRST)) == float(np.float32(3.0) + np.float32(MATCH_FIRST))


def test_near_tie_flips_judges_the_first_layer_that_differs():
    mask = np.ones((3, 6), np.int64)
    kept = [np.array([[0, 1, 2, 3]] * 3), np.array([[0, 1, 2]] * 3)]
    scores = [np.array([[9.0, 5.0, 4.0, 3.0, 2.9999995, 0.5]] * 3), np.full((3, 6), np.nan)]
    scores[1][:, :4] = [[9.0, 5.0, 4.0, 3.0]] * 3
    want = Predictions(np.zeros((3, 6)), np.zeros((3, 6)), kept, scores)
    got_kept = [k.copy() for k in kept]
    got_kept[0][1] = [0, 1, 2, 4]  # window 1: token 3 (3.0) swapped for token 4 (2.9999995); layer 1 follows suit
    got_kept[1][1] = [0, 1, 4]
    got_kept[0][2] = [0, 1, 5, 3]  # window 2: token 2 (4.0) swapped for token 5 (0.5): a wrong ranking
    flips = near_tie_flips(want, Predictions(want.start_logits, want.end_logits, got_kept), mask)
    assert [(f.window, f.layer, f.swapped) for f in flips] == [(1, 0, 2), (2, 0, 2)]
    assert flips[0].gap == pytest.approx(5e-7) and flips[1].gap == pytest.approx(3.5)


def _perturb_ranking(source, dest, amplitude: float) -> None:
    """The graph with `amplitude * sin(1000 * score)` added to every ranking score before its TopK: an order that
    differs from PyTorch's only among tokens ranked within about 2 * amplitude of each other."""
    model = onnx.load(str(source))
    nodes = []
    for node in model.graph.node:
        if node.op_type == "TopK":
            x = node.input[0]
            scale = helper.make_tensor(f"{x}/scale", TensorProto.DOUBLE, [], [1000.0])
            amp = helper.make_tensor(f"{x}/amp", TensorProto.DOUBLE, [], [amplitude])
            model.graph.initializer.extend([scale, amp])
            nodes += [helper.make_node("Mul", [x, scale.name], [f"{x}/scaled"]),
                      helper.make_node("Sin", [f"{x}/scaled"], [f"{x}/sin"]),
                      helper.make_node("Mul", [f"{x}/sin", amp.name], [f"{x}/noise"]),
                      helper.make_node("Add", [x, f"{x}/noise"], [f"{x}/perturbed"])]
            node.input[0] = f"{x}/perturbed"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dest))


def test_validation_tells_near_ties_from_a_wrong_ranking(exported_root, trained_dir, tmp_path):
    """A graph whose ranking moves each score by at most `amplitude` swaps only tokens PyTorch ranked within
    2 * amplitude: accepted (the swaps reported, the other windows' logits compared) when the tie tolerance covers
    that, refused when it does not; a ranking moved by 0.5 is refused at the default tolerance."""
    from toolchain.core.length import LengthConfig

    model, tokenizer = load_qa_model(trained_dir)
    feats = squad.featurize(squad.load_squad("dev", limit=24, offset=300), tokenizer)
    config = LengthConfig.parse(REDUCED, 6)
    source = exported_root / REDUCED_DIR / "model.onnx"
    _perturb_ranking(source, tmp_path / "wrong.onnx", 0.5)
    with pytest.raises(ExportValidationError, match="beyond a near tie"):
        validate_graph(tmp_path / "wrong.onnx", model, config, feats)
    amplitude = 0.04
    _perturb_ranking(source, tmp_path / "ties.onnx", amplitude)
    report = validate_graph(tmp_path / "ties.onnx", model, config, feats, tie_atol=4 * amplitude)
    ties = report["near_ties"]["windows"]
    assert ties, "the perturbation swapped no token: the check below would run on nothing"
    assert all(0 < t["gap"] <= 2 * amplitude for t in ties) and report["max_abs_diff"] < 1e-3
    assert report["kept_agreement"] == [1.0] * 6  # over the windows compared
    with pytest.raises(ExportValidationError, match="beyond a near tie"):
        validate_graph(tmp_path / "ties.onnx", model, config, feats)
