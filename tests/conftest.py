"""Shared fixtures: real SQuAD slices from ../shared/squad and the trained reference model from ../shared/models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import strategies as st
import torch

from toolchain.core.settings import ExportSettings, VerifySettings
from toolchain.data import squad
from toolchain.train.args import resolve_base

REFERENCE_MODEL = "minilm-squad-lat"  # the trained model most tests export, quantize and search

# pytest -n N (pytest-xdist, as CI runs): N worker processes share the cores, so each takes its share of threads.
torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    path = squad.default_squad_dir()
    assert (path / "dev-v1.1.json").is_file(), f"SQuAD v1.1 not found at {path} (see ../shared/README.md)"
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    return resolve_base("minilm")


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)


@pytest.fixture(scope="session")
def minilm_qa(minilm_dir):
    """The real MiniLM encoder with an untrained QA head: real attention patterns, no training cost."""
    from transformers import AutoModelForQuestionAnswering

    torch.manual_seed(0)
    return AutoModelForQuestionAnswering.from_pretrained(minilm_dir, local_files_only=True, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, squad_dir) -> Path:
    """The shared reference model ../shared/models/minilm-squad-lat (made by `qtool train`: a SQuAD stage, then a
    LengthDrop stage), copied into a writable folder: a real trained length-adaptive model at no training cost.
    tests/train trains its own models to test training."""
    source = squad_dir.parent / "models" / REFERENCE_MODEL
    assert (source / "model.safetensors").is_file(), f"reference model not found at {source} (see ../shared/README.md)"
    out = tmp_path_factory.mktemp("trained") / REFERENCE_MODEL
    out.mkdir()
    for file in source.iterdir():
        shutil.copyfile(file, out / file.name)  # the shared folder is read-only; the copy is the tests' own
    return out


@pytest.fixture(scope="session")
def dev_examples(squad_dir):
    return squad.load_squad("dev", limit=40)


REDUCED = "300,250,200,150,120,100"


@pytest.fixture(scope="session")
def exported_root(tmp_path_factory, trained_dir) -> Path:
    """The trained model exported at the full and one reduced configuration (validated on 8 dev questions)."""
    from toolchain.graph.export import export_configs

    root = tmp_path_factory.mktemp("graphs") / "minilm"
    export_configs(trained_dir, ["full", REDUCED], root, settings=ExportSettings(samples=8))
    return root


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory, trained_dir) -> tuple[Path, dict]:
    """`run_bench` on the trained model at one reduced configuration (a 12-question dev slice): our FP32 and
    INT8 graphs and the standard recipe's three graphs, with the report. Under `pytest -n` it is built once, by the
    first worker that asks, in the run's shared temporary folder; the others wait for it and read it."""
    import json

    from filelock import FileLock
    from toolchain.evaluate.bench import run_bench
    from toolchain.core.settings import BenchSettings, QuantizeSettings

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, saved = shared / "bench-run" / "bench", shared / "bench-run" / "report.json"
    with FileLock(str(shared / "bench-run.lock")):
        if not saved.is_file():
            verify = VerifySettings(limit=12, batch_sizes=(1, 2), rounds=1, workload_windows=4)
            quantize = QuantizeSettings(samples=8, tune_questions=20, tolerance=100.0, recipes=("dynamic-all",),
                                        timing_batches=(1, 2))
            report = run_bench(trained_dir, [REDUCED], root, verify, BenchSettings(quantize=quantize, plain_ort=False),
                               log=lambda _: None)
            saved.write_text(json.dumps(report))
    return root, json.loads(saved.read_text())


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1 for the session (tests/pg_server.py), stopped at the end."""
    import pg_server

    server = pg_server.start()
    yield server
    server.stop()


# Any JSON-like value, nested a little: what hypothesis feeds manifest and request checks (kit and run-time graph tests).
JUNK = st.recursive(st.none() | st.booleans() | st.integers(-10**40, 10**40) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)

