import copy
import json
import random
import re
from dataclasses import replace

import pytest
import torch

from toolchain.core.errors import QtoolError
from toolchain.model.drop_and_restore import LengthConfig, load_qa_model
from toolchain.core.settings import TrainSettings
from toolchain.train.lengthdrop import WIDTH_MULTIPLE, batch_width, random_config, sandwich, scaled_to_width, smallest_config
from toolchain.train.loop import train
from toolchain.evaluate.verify import evaluate_model


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


@pytest.mark.parametrize("rule", ["ratio", "cap"])
def test_length_drop_samples_what_the_length_rule_will_do(rule):
    """A 64-token batch: 'ratio' drops a share of it in every layer; 'cap' draws for max_length (384) and caps,
    so a short window keeps what a cap graph keeps of it."""
    from toolchain.model.drop_and_restore import flops

    args = TrainSettings(base="minilm", out="unused", max_length=384, length_drop=True, num_sandwich=3, layerdrop=0.0,
                     length_rule=rule)
    subs = sandwich(args, 6, 64, random.Random(0))
    assert len(subs) == 4 and all(skip == () for _, skip in subs)
    smallest = subs[0][0]
    counts, n = [], 64
    for i in range(6):
        n = smallest.keep_count(i, 64, n)
        counts.append(n)
    if rule == "ratio":
        assert counts == [52, 42, 34, 28, 23, 19]
    else:
        assert smallest.keep == (308, 247, 198, 159, 128, 103) and counts == [64] * 6
        # and on a 200-token window only the later layers drop, as at inference
        assert flops(smallest, 384, 1536, 200) < flops(LengthConfig.full(6), 384, 1536, 200)


def test_ratio_training_scales_sandwich_configs_to_the_batch_width():
    """Under the 'ratio' training rule a named configuration (stated for max_length) keeps ceil(k * width / 384)
    of a padded batch, at least 1, as LAT's scaling did; under 'cap' it is read as stated."""
    args = dict(base="minilm", out="unused", max_length=384, length_drop=True, sandwich_configs=("315,251,skip,159,142,33",))
    ((scaled, _),) = sandwich(TrainSettings(**args, length_rule="ratio"), 6, 192, random.Random(0))
    assert scaled.keep == (158, 126, None, 80, 71, 17) and scaled.seq_len == 192 and scaled.rule == "cap"
    assert [scaled.keep_count(i, 192, 192) for i in (0, 1, 5)] == [158, 126, 17]
    assert scaled_to_width(LengthConfig.parse("4,2,1,1,1,1", 6, 384), 8).keep == (1,) * 6
    ((stated, _),) = sandwich(TrainSettings(**args, length_rule="cap"), 6, 192, random.Random(0))
    assert stated.keep == (315, 251, None, 159, 142, 33) and stated.seq_len == 384


LEARN_STEPS = 30


def test_training_learns_squad(tmp_path):
    """Half a minute of seeded fine-tuning on real SQuAD already answers some dev questions; the untrained head
    cannot."""
    out = tmp_path / "minilm-qa"
    train(TrainSettings(base="minilm", out=str(out), limit=1000, max_length=192, batch_size=16,
                        max_steps=LEARN_STEPS, lr=2e-4, warmup=0.1, seed=0))
    info = json.loads((out / "qtool_train.json").read_text())
    assert info["steps"] == LEARN_STEPS and info["examples_seen"] == LEARN_STEPS * 16
    model, tokenizer = load_qa_model(out)
    assert tokenizer.is_fast
    rows = evaluate_model(out, ["full", "300,250,200,150,120,100"], limit=60, show_progress=False)
    full, reduced = rows
    assert full["f1"] > 12.0, full
    assert reduced["flops_ratio"] < 0.7
    base = evaluate_model_untrained(limit=60)
    assert full["f1"] > base + 6, (full, base)


def evaluate_model_untrained(limit):
    from toolchain.data import squad
    from toolchain.train.args import resolve_base
    from toolchain.evaluate.verify import predict_torch, score
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    torch.manual_seed(0)
    path = resolve_base("minilm")
    model = AutoModelForQuestionAnswering.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    examples = squad.load_squad("dev", limit=limit)
    feats = squad.featurize(examples, tok)
    return score(examples, feats, predict_torch(model, feats))["f1"]


def test_same_seed_gives_the_same_model_whatever_ran_before(tmp_path):
    """--seed pins the new QA head and dropout too: earlier draws from torch's generator change nothing."""
    from safetensors.torch import load_file

    weights = []
    for run, noise in enumerate((1, 1000)):
        torch.rand(noise)  # another test, or another stage, drew from the global generator first
        out = tmp_path / f"run{run}"
        train(TrainSettings(base="minilm", out=str(out), limit=16, max_length=128, batch_size=8, max_steps=2,
                        save_every=0.0, seed=3, bf16=False))
        weights.append(load_file(out / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_length_drop_can_be_restricted_to_the_configurations_to_ship():
    args = TrainSettings(base="minilm", out="unused", max_length=384, length_drop=True, length_rule="cap",
                     sandwich_configs=("348,287,234,202,170,149", "315,251,242,159,142,33"))
    for width in (64, 384):
        subs = sandwich(args, 6, width, random.Random(width))
        assert [c.label for c, _ in subs] == list(args.sandwich_configs) and all(s == () for _, s in subs)
        assert all(c.seq_len == 384 and c.rule == "cap" for c, _ in subs)


def test_training_on_documents_writes_a_learning_curve(tmp_path, minilm_tokenizer):
    """--neighbours widens the training contexts (more, fuller windows); snapshots are loadable models that
    differ step by step; a restricted sandwich runs (a bad configuration fails before featurizing)."""
    from toolchain.data import squad

    common = dict(base="minilm", limit=12, max_length=128, batch_size=4, max_steps=2, length_drop=True,
                  length_rule="cap", neighbours=1, seed=3, bf16=False)
    with pytest.raises(QtoolError, match="length configuration"):
        train(TrainSettings(out=str(tmp_path / "bad"), sandwich_configs=("100,x",), **common))
    args = TrainSettings(out=str(tmp_path / "doc"), sandwich_configs=("120,100,90,80,70,60",), snapshot_every=1,
                     snapshot_dir=str(tmp_path / "curve"), **common)
    info = train(args)
    assert info["args"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the record says what ran
    paragraphs = squad.featurize(squad.load_squad("train", limit=12), minilm_tokenizer, 128, 64)
    assert info["features"] > 1.5 * len(paragraphs)
    snapshots = sorted(p.name for p in (tmp_path / "curve").iterdir())
    assert snapshots == ["step-1", "step-2"]
    first, _ = load_qa_model(tmp_path / "curve" / "step-1")
    second, _ = load_qa_model(tmp_path / "curve" / "step-2")
    assert json.loads((tmp_path / "curve" / "step-1" / "qtool_train.json").read_text())["steps"] == 1
    w1, w2 = first.qa_outputs.weight, second.qa_outputs.weight
    assert not torch.equal(w1, w2)
    final, _ = load_qa_model(tmp_path / "doc")
    assert torch.equal(final.qa_outputs.weight, w2)


def test_a_frozen_teacher_trains_only_the_sub_model_above_the_frozen_layers(trained_dir, tmp_path):
    """--teacher frozen --freeze-layers 2: the embeddings and layers 0-1 keep the base's weights exactly, the later
    layers and the QA head learn, and the record says which teacher taught."""
    from safetensors.torch import load_file

    info = train(TrainSettings(base=str(trained_dir), out=str(tmp_path / "o"), limit=12, max_length=128, batch_size=4,
                           max_steps=2, length_drop=True, length_rule="cap", neighbours=1, teacher="frozen",
                           freeze_layers=2, sandwich_configs=("100,80,60,50,40,30",), lr=1e-3, seed=3, bf16=False))
    assert info["args"]["teacher"] == "frozen" and info["args"]["freeze_layers"] == 2
    assert info["final_loss_ema"] > 0  # the sub-model's distillation loss; the full model learns nothing itself
    before, after = load_file(trained_dir / "model.safetensors"), load_file(tmp_path / "o" / "model.safetensors")
    frozen = [n for n in before if n.startswith("bert.embeddings.") or re.match(r"bert\.encoder\.layer\.[01]\.", n)]
    learning = [n for n in before if re.match(r"bert\.encoder\.layer\.[2-5]\.", n) or n.startswith("qa_outputs.")]
    assert len(frozen) > 10 and len(frozen) + len(learning) == len(before)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in learning if n.endswith(".weight"))


def test_the_frozen_teacher_is_the_base_and_the_full_model_learns_no_span_loss(trained_dir, dev_examples):
    """One step's loss is exactly the sub-model's KL against the *base* model's logits, even after the student
    moved away from the base; inplace distillation would add the span loss and teach with the student's logits."""
    from contextlib import nullcontext

    from toolchain.data import squad
    from toolchain.model.drop_and_restore import drop_and_restore
    from toolchain.train.base import frozen_teacher
    from toolchain.train.lengthdrop import _distill, step_loss

    model, tokenizer = load_qa_model(trained_dir)
    model.eval()  # no dropout: the values below are exact
    args = TrainSettings(base=str(trained_dir), out="unused", max_length=128, length_drop=True, length_rule="cap",
                     teacher="frozen", sandwich_configs=("100,80,60,50,40,30",))
    teacher = frozen_teacher(args, model)
    with torch.no_grad():
        model.qa_outputs.weight.mul_(0.5)  # the student has moved; the teacher must not follow
    feats = squad.featurize(dev_examples[:4], tokenizer, 128, 64, pad_to_max_length=False, with_targets=True)
    rows = list(range(4))
    batch = {k: torch.from_numpy(v[:, :128]) for k, v in feats.model_inputs(rows).items()}
    starts, ends = torch.from_numpy(feats.start_positions[rows]), torch.from_numpy(feats.end_positions[rows])
    total = step_loss(args, model, batch, starts, ends, 6, 128, random.Random(0), nullcontext(), teacher=teacher)
    base, _ = load_qa_model(trained_dir)
    config = sandwich(args, 6, 128, random.Random(0))[0][0]
    with torch.no_grad():
        base_s, base_e = drop_and_restore(base.eval(), **batch)
        s, e = drop_and_restore(model, **batch, config=config)
        mask = batch["attention_mask"]
        expected = ((_distill(s, base_s, mask) + _distill(e, base_e, mask)) / 2).item()
    assert expected > 1e-3 and total == pytest.approx(expected, rel=1e-4)
    assert model.qa_outputs.weight.grad is not None  # the sub-model's loss reached the shared weights


def test_a_stage_under_answer_trains_the_sub_model_the_answer_graph_runs(minilm_qa, minilm_tokenizer, dev_examples):
    """--variant answer: each step's sub-model ranks by the QA head's answer score, as the exported graph will (the
    loss is the KL of that sub-model, and differs from the one `match` ranking gives on the same batch)."""
    from contextlib import nullcontext

    from toolchain.data import squad
    from toolchain.model.drop_and_restore import drop_and_restore, near_question_words
    from toolchain.train.base import frozen_teacher
    from toolchain.train.lengthdrop import _distill, step_loss

    model = copy.deepcopy(minilm_qa)  # step_loss leaves gradients on the model; the fixture is shared
    feats = squad.featurize(dev_examples[:4], minilm_tokenizer, 384, 128, pad_to_max_length=False, with_targets=True)
    batch = {k: torch.from_numpy(v) for k, v in feats.model_inputs(list(range(4))).items()}
    width = batch["input_ids"].shape[1]
    starts, ends = torch.from_numpy(feats.start_positions[:4]), torch.from_numpy(feats.end_positions[:4])
    question_len = ((batch["token_type_ids"] == 0) & (batch["attention_mask"] > 0)).sum(1, keepdim=True)
    near = near_question_words(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], question_len)
    favoured, real = int((question_len[:, 0] + near.sum(1)).max()), int(batch["attention_mask"].sum(1).min())
    assert favoured < real  # room at the first layer for tokens beyond the ones both variants favour
    keep = ",".join(str(k) for k in ((favoured + real) // 2, 40, 30, 20, 10, 5))
    losses = {}
    for variant in ("match", "answer"):
        args = TrainSettings(base="minilm", out="unused", max_length=384, length_drop=True, length_rule="cap",
                             teacher="frozen", variant=variant, sandwich_configs=(keep,))
        config = sandwich(args, 6, width, random.Random(0))[0][0]
        assert config.variant == variant
        losses[variant] = step_loss(args, model, batch, starts, ends, 6, width, random.Random(0), nullcontext(),
                                    teacher=frozen_teacher(args, model))
        with torch.no_grad():
            full_s, full_e = drop_and_restore(model, **batch)
            s, e = drop_and_restore(model, **batch, config=config)
            mask = batch["attention_mask"]
            expected = ((_distill(s, full_s, mask) + _distill(e, full_e, mask)) / 2).item()
        assert losses[variant] == pytest.approx(expected, rel=1e-4)
    assert losses["answer"] != pytest.approx(losses["match"], rel=1e-3)  # the ranking decided what the sub-model kept


def test_frozen_teachers_and_frozen_layers_refuse_what_they_cannot_train(trained_dir, tmp_path):
    with pytest.raises(QtoolError, match="^--freeze-layers must be less than the model's 6 layers, got 6$"):
        train(TrainSettings(base=str(trained_dir), out=str(tmp_path / "o"), limit=8, max_steps=1, max_length=64,
                        freeze_layers=6))
    with pytest.raises(QtoolError, match="^--teacher frozen needs a trained QA model as --base; minilm has no QA head"):
        train(TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=8, max_steps=1, max_length=64,
                        length_drop=True, teacher="frozen"))
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_line(tmp_path):
    with pytest.raises(QtoolError, match="^--device cuda: no CUDA GPU"):
        train(TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=8, max_steps=1, max_length=64, device="cuda"))
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_uses_the_gpu_when_one_is_present(tmp_path):
    info = train(TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=16, max_steps=2, max_length=128, batch_size=4,
                           length_drop=True, num_sandwich=1, seed=0))
    assert info["args"]["device"] == "cuda" and info["args"]["bf16"] == torch.cuda.is_bf16_supported()
    model, _ = load_qa_model(tmp_path / "o")  # saved weights load on the CPU
    assert next(model.parameters()).device.type == "cpu"


def test_length_drop_stage_survives_an_interruption(trained_dir, tmp_path):
    """LengthDrop runs the sandwich from a QA checkpoint; an interrupted run resumes from its checkpoint."""
    out = tmp_path / "ld"
    args = TrainSettings(base=str(trained_dir), out=str(out), limit=64, max_length=128, batch_size=8, max_steps=3,
                     length_drop=True, num_sandwich=1, save_every=0.0, seed=1, variant="lat")

    def interrupt_after_two(state):
        if state["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(args, progress=interrupt_after_two)
    assert (out / "checkpoint" / "trainer.pt").is_file()
    assert not (out / "config.json").exists()  # no final model from an interrupted run
    with pytest.raises(QtoolError, match="^--resume: .* was trained with --teacher inplace --freeze-layers 0; resume "
                                         "with the same options$"):
        train(replace(args, freeze_layers=2), resume=True)
    resumed = train(args, resume=True)
    assert resumed["steps"] == 3 and resumed["examples_seen"] == 3 * 8
    assert not (out / "checkpoint").exists()  # removed once the final model is written
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    model, _ = load_qa_model(out)
    # the variant LengthDrop trained is recorded, so export runs the model the way it was trained
    assert json.loads((out / "config.json").read_text())["qtool_drop_variant"] == "lat"
    from toolchain.model.drop_and_restore import trained_variant

    assert trained_variant(model) == "lat"


def test_missing_base_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="base model folder not found"):
        train(TrainSettings(base=str(tmp_path / "nope"), out=str(tmp_path / "o"), limit=8, max_steps=1))


def test_batch_width_rounds_up_to_the_multiple():
    assert WIDTH_MULTIPLE == 32
    assert [batch_width(n, 256) for n in (1, 32, 33, 200, 250, 256)] == [32, 32, 64, 224, 256, 256]
    assert batch_width(250, 250) == 250  # never wider than the features


def test_training_sees_few_distinct_batch_shapes(tmp_path):
    """CPU kernels cache one primitive per input shape, so memory grows with the number of distinct widths.

    A full epoch over real SQuAD windows must use at most max_length / 32 widths (one width per batch
    gives dozens here).
    """
    widths: list[int] = []
    args = TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=48, max_length=128, batch_size=2,
                     doc_stride=64, epochs=1.0, bf16=False, seed=0)
    info = train(args, progress=lambda state: widths.append(state["width"]))
    assert len(widths) == info["steps"] >= 40  # one epoch of the ~100 windows
    assert all(w % WIDTH_MULTIPLE == 0 and 0 < w <= 128 for w in widths), widths
    assert len(set(widths)) <= 128 // WIDTH_MULTIPLE


@pytest.mark.parametrize(
    "field, value, option",
    [("batch_size", 0, "--batch-size"), ("max_length", 8, "--max-length"), ("lr", 0.0, "--lr"),
     ("lr", float("nan"), "--lr"), ("max_steps", 0, "--max-steps"), ("limit", 0, "--limit"),
     ("epochs", -1.0, "--epochs"), ("time_budget", 0.0, "--time-budget"), ("warmup", 1.0, "warmup"),
     ("length_drop_ratio", 1.0, "--length-drop-ratio"), ("layerdrop", -0.1, "--layerdrop"),
     ("num_sandwich", -1, "--num-sandwich"), ("doc_stride", 128, "doc_stride"), ("threads", 0, "--threads"),
     ("neighbours", -1, "--neighbours"), ("sandwich_configs", ("100,90",), "--sandwich-config"),
     ("snapshot_every", 2, "--snapshot-dir"), ("device", "tpu", "--device"), ("teacher", "self", "--teacher"),
     ("teacher", "frozen", "--teacher frozen"), ("freeze_layers", -1, "--freeze-layers")],
)
def test_train_args_are_validated(tmp_path, field, value, option):
    args = TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=8, max_steps=1, max_length=128)
    args.validate()
    args = replace(args, **{field: value})
    with pytest.raises(ValueError, match=f"^{option} must be"):
        train(args)
    assert not (tmp_path / "o").exists()


def test_train_refuses_lengths_past_the_model_and_foreign_out_folders(tmp_path):
    with pytest.raises(ValueError, match=r"--max-length 1024 exceeds what minilm supports \(512 positions\)"):
        train(TrainSettings(base="minilm", out=str(tmp_path / "o"), limit=8, max_steps=1, max_length=1024))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a model folder"):
        train(TrainSettings(base="minilm", out=str(foreign), limit=8, max_steps=1))
    assert (foreign / "todo.txt").read_text() == "keep me"


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_steps(tmp_path, minilm_tokenizer):
    """Plain fine-tuning on real SQuAD windows of every length: resident memory after warm-up stays flat
    (it grew without bound when every batch had its own width). A small BERT keeps this fast."""
    from transformers import BertConfig, BertForQuestionAnswering

    base = tmp_path / "tiny"
    torch.manual_seed(0)
    BertForQuestionAnswering(BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=128)).save_pretrained(base)
    minilm_tokenizer.save_pretrained(base)
    rss: dict[int, float] = {}

    def record(state):
        if state["step"] in (100, 200, 400):
            rss[state["step"]] = _rss_mb()

    args = TrainSettings(base=str(base), out=str(tmp_path / "o"), limit=4000, max_length=256, batch_size=4,
                     max_steps=400, bf16=True, seed=0, threads=2)
    train(args, progress=record)
    assert set(rss) == {100, 200, 400}
    growth = rss[400] - rss[100]
    assert growth < 0.05 * rss[100] + 30, rss  # flat: a few percent of what the run holds, not hundreds of MB
