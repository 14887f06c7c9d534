"""Shared fixtures: real SQuAD slices from ../shared/squad and the trained reference model from ../shared/models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import strategies as st
import torch

from toolchain.core.settings import ExportSettings
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


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build` writes once per run, by the first worker that asks (in the run's shared temporary folder,
    under a lock; the others wait for it), then copied into this worker's own temporary folder, so that tests may
    write beside it as they would beside a folder of their own. Under `pytest -n 2` that saves one export per folder."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    shared.mkdir(exist_ok=True)
    master, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():  # built in place (manifests name the paths they came from), then marked whole
            shutil.rmtree(master, ignore_errors=True)
            build(master)
            done.touch()
    copy = tmp_path_factory.mktemp(name) / name
    shutil.copytree(master, copy)
    return copy


@pytest.fixture(scope="session")
def exported_root(tmp_path_factory, trained_dir) -> Path:
    """The trained model exported at the full and one reduced configuration (validated on 8 dev questions)."""
    from toolchain.graph.export import export_configs

    return built_once(tmp_path_factory, "minilm",
                      lambda out: export_configs(trained_dir, ["full", REDUCED], out, settings=ExportSettings(samples=8)))


def export_recording_variant(trained_dir: Path, variant: str, out: Path) -> Path:
    """The trained model, its config recording `variant` (as `qtool train --variant` leaves it), exported at REDUCED
    without naming the variant: the export must take it from the config."""
    import json

    from toolchain.graph.export import export_configs
    from toolchain.model.drop_and_restore import VARIANT_ATTRIBUTE

    model = out / f"{variant}-model"
    shutil.copytree(trained_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, VARIANT_ATTRIBUTE: variant}))
    (artifact,) = export_configs(model, [REDUCED], out / "graphs", settings=ExportSettings(samples=4))
    return artifact


@pytest.fixture(scope="session")
def answer_graph(tmp_path_factory, trained_dir) -> Path:
    """The trained model's `answer` graph at REDUCED, its variant recorded in the model's config: the one `answer`
    export of the run (tests/model checks the export, tests/quantize the drift report on it)."""
    root = built_once(tmp_path_factory, "answer", lambda out: export_recording_variant(trained_dir, "answer", out))
    return root / "graphs" / f"fp32-{REDUCED.replace(',', '-')}-answer"


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

