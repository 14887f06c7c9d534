"""The toolchain refuses bad input in one line: repeated or full sandwich configurations, repeated menu entries,
a manifest that is not UTF-8, a truncated graph whose checksum was updated to match."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.artifact import artifact
from toolchain.artifact import manifest as manifests
from toolchain.cli.commands import main
from toolchain.core.errors import InputError
from toolchain.graph.export import ExportError, export_configs
from toolchain.core.settings import TrainSettings
from toolchain.train.args import check_sandwich_configs

REDUCED_DIR = "fp32-" + REDUCED.replace(",", "-")


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("configs, message", [
    (("212,194,189,96,81,51", "212,194,189,96,81,51"), "given twice"),
    (("212,194,189,96,81,51", "212, 194, 189, 96, 81, 51"), "given twice"),  # the same configuration spelled apart
    (("full",), "is the full model"),
    (("384,384,384,384,384,384",), "is the full model"),
])
def test_sandwich_configs_are_distinct_reduced_configurations(configs, message):
    args = TrainSettings(base="minilm", out="unused", length_drop=True, sandwich_configs=configs, max_length=384)
    with pytest.raises(InputError, match=message):
        check_sandwich_configs(args, 6)
    ok = TrainSettings(base="minilm", out="unused", length_drop=True, max_length=384,
                   sandwich_configs=("212,194,189,96,81,51", "315,251,242,159,142,33"))
    assert [c.keep for c in check_sandwich_configs(ok, 6)] == [(212, 194, 189, 96, 81, 51), (315, 251, 242, 159, 142, 33)]


def test_a_repeated_menu_entry_is_refused_before_work(trained_dir, tmp_path):
    out = tmp_path / "graphs"
    with pytest.raises(ExportError, match="given twice"):
        export_configs(trained_dir, ["runtime"], out, menu=[REDUCED, REDUCED])
    assert not out.exists()


@pytest.fixture
def artifact_copy(exported_root, tmp_path):
    copy = tmp_path / "graphs" / REDUCED_DIR
    shutil.copytree(exported_root / REDUCED_DIR, copy)
    return copy


def test_a_manifest_that_is_not_utf8_is_one_line(artifact_copy):
    path = artifact_copy / artifact.MANIFEST
    path.write_bytes(path.read_bytes().replace(b'"format"', b'"\xff\xfeformat"', 1))
    with pytest.raises(artifact.ArtifactError, match="not valid JSON"):
        manifests.load(artifact_copy)
    line = _one_error_line(CliRunner().invoke(main, ["verify", str(artifact_copy.parent), "--limit", "2"]))
    assert "manifest.json" in line


def test_a_truncated_graph_with_a_matching_checksum_is_one_line(artifact_copy, tmp_path):
    graph = artifact_copy / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    data = artifact.read_manifest(artifact_copy)
    data["files"]["model.onnx"] = artifact.sha256(graph)  # what someone editing the folder by hand would do
    (artifact_copy / artifact.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(manifests.ManifestError, match="not a loadable ONNX graph"):
        manifests.load(artifact_copy)
    for args in (["verify", str(artifact_copy.parent), "--limit", "2"],
                 ["menu", str(artifact_copy)],
                 ["route", "--full", str(artifact_copy), "--reduced", str(artifact_copy), "--full-up-to", "100",
                  "--out", str(tmp_path / "routed")]):
        assert "not a loadable ONNX graph" in _one_error_line(CliRunner().invoke(main, args)), args
    assert not (tmp_path / "routed").exists()


def test_a_manifest_edited_to_another_configuration_is_refused_not_mislabelled(artifact_copy, tmp_path):
    """The toolchain checks an artifact as the kit does: the graph run on a full window keeps what `keep` says."""
    data = artifact.read_manifest(artifact_copy)
    data["length_config"]["keep"] = [212, 194, 189, 96, 81, 51]
    (artifact_copy / artifact.MANIFEST).write_text(json.dumps(data))
    result = CliRunner().invoke(main, [
        "verify", str(artifact_copy.parent), "--limit", "2", "--torch-configs", "none", "--protocol", "unpadded",
        "--rounds", "1", "--workload", "1", "--batch-sizes", "1", "--report-dir", str(tmp_path / "report")])
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "manifest altered" in errors[0], result.output
    assert "Traceback" not in result.output and not (tmp_path / "report").exists()


@pytest.mark.parametrize("text", ["my notes\n", '{"a": 1}\n'])
def test_a_storage_that_is_not_an_optuna_journal_is_refused_untouched(trained_dir, tmp_path, text):
    storage = tmp_path / "notes.txt"
    storage.write_text(text)
    line = _one_error_line(CliRunner().invoke(main, ["search", "--model", str(trained_dir), "--trials", "1",
                                                     "--questions", "4", "--neighbours", "0", "--storage", str(storage)]))
    assert "not an optuna journal" in line and storage.read_text() == text
