import json
import random

import pytest
import torch

from toolchain.model import LengthConfig, load_qa_model
from toolchain.train import TrainArgs, random_config, smallest_config, train
from toolchain.verify import evaluate_model

from conftest import TRAIN_STEPS


def test_sandwich_configs_respect_the_drop_bound():
    small = smallest_config(6, 384, 0.2)
    assert small.keep == (308, 247, 198, 159, 128, 103)
    rng = random.Random(0)
    for _ in range(50):
        config = random_config(6, 300, 0.2, rng)
        config.validate(6)
        previous = 300
        for k in config.keep:
            assert previous * 0.8 <= k <= previous
            previous = k
        assert all(k >= s for k, s in zip(config.keep, smallest_config(6, 300, 0.2).keep))


def test_training_learns_squad(trained_dir):
    """A minute of fine-tuning on real SQuAD already answers some dev questions; the untrained head cannot."""
    info = json.loads((trained_dir / "qtool_train.json").read_text())
    assert info["steps"] == TRAIN_STEPS and info["examples_seen"] == TRAIN_STEPS * 16
    model, tokenizer = load_qa_model(trained_dir)
    assert tokenizer.is_fast
    rows = evaluate_model(trained_dir, ["full", "300,250,200,150,120,100"], limit=60, show_progress=False)
    full, reduced = rows
    assert full["f1"] > 12.0, full
    assert reduced["flops_ratio"] < 0.7
    base = evaluate_model_untrained(limit=60)
    assert full["f1"] > base + 6, (full, base)


def evaluate_model_untrained(limit):
    from toolchain import squad
    from toolchain.train import resolve_base
    from toolchain.verify import predict_torch, score
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    torch.manual_seed(0)
    path = resolve_base("minilm")
    model = AutoModelForQuestionAnswering.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    examples = squad.load_squad("dev", limit=limit)
    feats = squad.featurize(examples, tok)
    return score(examples, feats, predict_torch(model, feats))["f1"]


def test_length_drop_stage_survives_an_interruption(trained_dir, tmp_path):
    """LengthDrop runs the sandwich from a QA checkpoint; an interrupted run resumes from its checkpoint."""
    out = tmp_path / "ld"
    args = TrainArgs(base=str(trained_dir), out=str(out), limit=64, max_length=128, batch_size=8, max_steps=3,
                     length_drop=True, num_sandwich=1, save_every=0.0, seed=1)

    def interrupt_after_two(state):
        if state["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(args, progress=interrupt_after_two)
    assert (out / "checkpoint" / "trainer.pt").is_file()
    assert not (out / "config.json").exists()  # no final model from an interrupted run
    resumed = train(args, resume=True)
    assert resumed["steps"] == 3 and resumed["examples_seen"] == 3 * 8
    assert not (out / "checkpoint").exists()  # removed once the final model is written
    load_qa_model(out)


def test_missing_base_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="base model folder not found"):
        train(TrainArgs(base=str(tmp_path / "nope"), out=str(tmp_path / "o"), limit=8, max_steps=1))
