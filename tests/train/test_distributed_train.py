"""Training under torchrun: two CPU processes (gloo) train what one process trains with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from toolchain.core.settings import TrainSettings
from toolchain.train.loop import train

# A few LengthDrop steps (full model + one random sub-model, layer skipping on) from the MiniLM encoder, without
# dropout and in float32, so that the only difference left between one and two processes is summation order.
STEPS, BATCH = 4, 8
ARGS = dict(base="minilm", limit=200, max_length=128, batch_size=BATCH, max_steps=STEPS, lr=1e-4,
            seed=3, length_drop=True, num_sandwich=1, dropout=0.0, bf16=False)
# Tolerance. Adam moves a weight by up to lr per step whatever its gradient's size, so a near-zero gradient whose
# sign summation order flips can put one weight up to 2 * lr apart per step: the largest difference may reach that.
# On average the two runs must agree far more closely than either moved from the base.
TOLERANCE = 2 * ARGS["lr"] * STEPS


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
    one = train(TrainSettings(out=str(tmp_path / "one"), threads=1, **ARGS))
    cli = ["--base", "minilm", "--limit", "200", "--max-length", "128", "--batch-size", str(BATCH), "--max-steps",
           str(STEPS), "--lr", "1e-4", "--seed", "3", "--length-drop", "--num-sandwich", "1", "--dropout", "0",
           "--no-bf16"]
    run = subprocess.run([sys.executable, "-m", "toolchain.cli", "train", "--out", str(tmp_path / "two"), "--nproc",
                          "2", *cli], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "qtool_train.json").read_text())
    assert record["processes"] == 2 and record["steps"] == STEPS and record["examples_seen"] == STEPS * BATCH
    assert run.stdout.count('"processes": 2') == 1  # rank 0 alone reports (and writes)
    assert abs(record["final_loss_ema"] - one["final_loss_ema"]) < 1e-6 * abs(one["final_loss_ema"])

    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= TOLERANCE, f"two processes moved a weight {worst:.2e} away from one process's"
    base = _base_weights(a)
    apart = torch.cat([(a[k].float() - b[k].float()).abs().reshape(-1) for k in base]).mean().item()
    moved = torch.cat([(a[k].float() - w).abs().reshape(-1) for k, w in base.items()]).mean().item()
    assert apart < 1e-4 * moved, (apart, moved)  # measured: 3e-11 apart against 4.5e-5 moved, on average


def _base_weights(trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The MiniLM encoder's own weights, under the trained model's names (the QA head is new: left out)."""
    from transformers import AutoModel

    from toolchain.train.args import resolve_base

    encoder = AutoModel.from_pretrained(resolve_base("minilm"), local_files_only=True).state_dict()
    prefix = next(k.split(".")[0] for k in trained if not k.startswith("qa_outputs"))
    return {k: encoder[k.removeprefix(prefix + ".")].float() for k in trained
            if k.removeprefix(prefix + ".") in encoder}
