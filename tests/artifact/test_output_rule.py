"""The one output rule (toolchain.artifact.output), verb by verb: what is left on disk when a command's destination is (a) a
folder holding a user's file, (b) the command's own input, (c) an existing output of the same kind, (d) a new path.

Refusals are one `Error:` line with exit code 1, found before any long work; route's are in test_route.py, with real
routed artifacts. Verbs whose run takes minutes (train, search, bench, standard) are checked through the function the
command calls before its work starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REDUCED
from toolchain.artifact import artifact, output
from toolchain.cli.commands import main
from toolchain.artifact.output import OutputError, OutputKind, RootKind, Target

REDUCED_NAME = REDUCED.replace(",", "-")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def refused(result, message: str) -> None:
    """One `Error:` line holding `message`, exit code 1."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], \
        result.output


def files(folder: Path) -> dict[str, str]:
    """Every path under `folder` ('dir', or a file's sha256): what 'untouched, byte for byte' compares."""
    return {p.relative_to(folder).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def user_folder(parent: Path, name: str = "mine") -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("keep")
    return folder


def fake_artifact(folder: Path, **manifest) -> Path:
    """A folder with a manifest: all the rule reads to tell an output's kind."""
    folder.mkdir(parents=True)
    (folder / artifact.MANIFEST).write_text(json.dumps(manifest))
    return folder


# the rule itself


def test_a_target_is_replaced_only_when_it_is_an_output_of_its_kind(tmp_path):
    int8 = fake_artifact(tmp_path / "int8-x", precision="int8")
    routed = fake_artifact(tmp_path / "routed", precision="int8", route={"full": {}})
    assert output.check_target(tmp_path / "new", OutputKind.ROUTED_ARTIFACT) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    output.check_target(tmp_path / "empty", OutputKind.ROUTED_ARTIFACT)
    output.check_target(routed, OutputKind.ROUTED_ARTIFACT)
    output.check_target(int8, OutputKind.INT8_ARTIFACT)
    with pytest.raises(OutputError, match="is a non-empty folder that is not a routed artifact"):
        output.check_target(int8, OutputKind.ROUTED_ARTIFACT)
    with pytest.raises(OutputError, match="is a non-empty folder that is not an FP32 qtool artifact"):
        output.check_target(user_folder(tmp_path), OutputKind.FP32_ARTIFACT)
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(OutputError, match="exists and is not a `qtool search` result"):
        output.check_target(tmp_path / "notes.json", OutputKind.SEARCH_RESULT)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        output.check_target(tmp_path / "notes.json", OutputKind.MODEL)
    with pytest.raises(OutputError, match="is a folder, not a file"):
        output.check_target(int8, OutputKind.LATENCY_MODEL)


def test_a_target_never_is_holds_or_lies_inside_an_input(tmp_path):
    src = fake_artifact(tmp_path / "root" / "fp32-x", precision="fp32")
    inputs = [("--in", src)]
    for target, message in ((src, "is --in"), (src.parent, "holds --in"), (src / "sub", "is inside --in")):
        with pytest.raises(OutputError, match=message):
            output.check_target(target, OutputKind.ROUTED_ARTIFACT, inputs=inputs)
    output.check_target(src.parent / "int8-x", OutputKind.INT8_ARTIFACT, inputs=inputs)  # beside an input is fine
    with pytest.raises(OutputError, match="is inside the artifact"):  # an input or not, an artifact takes no files
        output.check_target(src / "latency.json", OutputKind.LATENCY_MODEL)


def test_a_root_takes_a_new_or_empty_folder_or_one_holding_its_kind_of_output(tmp_path):
    user = user_folder(tmp_path)
    with pytest.raises(OutputError, match="holds files but is not a folder of qtool artifacts"):
        output.check_root(user, RootKind.ARTIFACTS)
    root = tmp_path / "graphs"
    fake_artifact(root / "fp32-full", precision="fp32")
    (root / "report.md").write_text("a previous report")  # a root holds more than artifacts; none of it is touched
    output.check_root(root, RootKind.ARTIFACTS, [Target(root / "fp32-full", OutputKind.FP32_ARTIFACT)])
    with pytest.raises(OutputError, match="is an artifact"):
        output.check_root(root / "fp32-full", RootKind.ARTIFACTS)
    with pytest.raises(OutputError, match=f"is inside --model {root}"):
        output.check_root(root / "sub", RootKind.ARTIFACTS, inputs=[("--model", root)])
    output.check_root(root, RootKind.ARTIFACTS, inputs=[("PATH", root / "fp32-full")])  # holding an input: fine
    assert (user / "a.txt").read_text() == "keep"


def test_staging_never_replaces_a_folder_that_is_not_an_artifact_of_its_kind(tmp_path):
    """The last line: whatever writes an artifact folder goes through `artifact.staging`, which checks again."""
    user = user_folder(tmp_path)
    with pytest.raises(OutputError, match="not an FP32 qtool artifact"):
        with artifact.staging(user, OutputKind.FP32_ARTIFACT) as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
    assert files(user) == {"a.txt": hashlib.sha256(b"keep").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# the verbs


def test_export_refuses_a_users_folder_and_its_model_before_loading_it(trained_dir, tmp_path):
    user = user_folder(tmp_path)
    model_before = files(trained_dir)
    refused(run("export", "--model", trained_dir, "--config", "full", "--out", user),
            f"--out {user} holds files but is not a folder of qtool artifacts")
    refused(run("export", "--model", trained_dir, "--config", "full", "--out", trained_dir), "is --model")
    refused(run("export", "--model", trained_dir, "--config", "full", "--out", trained_dir / "graphs"),
            "is inside --model")
    assert (user / "a.txt").read_text() == "keep" and files(trained_dir) == model_before


def test_export_replaces_only_artifacts_of_the_same_name(exported_root, tmp_path, trained_dir):
    root = tmp_path / "graphs"
    shutil.copytree(exported_root / "fp32-full", root / "fp32-full")
    user_folder(root, f"fp32-{REDUCED_NAME}")  # a user's folder under the name export would write
    before = files(root)
    refused(run("export", "--model", trained_dir, "--config", "full", "--config", REDUCED, "--out", root),
            f"--out {root / f'fp32-{REDUCED_NAME}'} is a non-empty folder that is not an FP32 qtool artifact")
    assert files(root) == before
    from toolchain.graph.export import planned_folders

    planned = planned_folders(trained_dir, ["full", REDUCED], exported_root)  # (c) the fixture's own artifacts
    output.check_root(exported_root, RootKind.ARTIFACTS, [Target(f, OutputKind.FP32_ARTIFACT) for f in planned])
    assert [f.name for f in planned] == ["fp32-full", f"fp32-{REDUCED_NAME}"] and all(f.is_dir() for f in planned)


def test_quantize_checks_every_destination_before_the_first_graph(exported_root, tmp_path):
    from toolchain.quantize.quantize import check_destination, int8_destination

    root = tmp_path / "graphs"
    for name in ("fp32-full", f"fp32-{REDUCED_NAME}"):
        shutil.copytree(exported_root / name, root / name)
    user_folder(root, f"int8-{REDUCED_NAME}")
    before = files(root)
    refused(run("quantize", root, "--no-tune", "--samples", 4),
            f"INT8 destination {root / f'int8-{REDUCED_NAME}'} is a non-empty folder that is not an INT8 artifact")
    assert files(root) == before and not (root / "int8-full").exists()  # not even the first one was written
    src = root / "fp32-full"
    with pytest.raises(OutputError, match="is the FP32 artifact"):
        check_destination(src, src)
    with pytest.raises(OutputError, match="is inside the FP32 artifact"):
        check_destination(src, src / "int8")
    fake_artifact(tmp_path / "int8-full", precision="int8")
    assert check_destination(src, tmp_path / "int8-full") == tmp_path / "int8-full"  # (c) re-quantizing replaces it
    assert check_destination(src, int8_destination(src)) == root / "int8-full"  # (d)
    assert int8_destination(src, plain_ort=True) == root / "ort-int8-full"


def test_standard_checks_its_folders_before_optimum_runs(trained_dir, tmp_path):
    from toolchain.evaluate.standard import standard_targets

    user = user_folder(tmp_path)
    refused(run("standard", "--model", trained_dir, "--out", user), "holds files but is not a folder of qtool artifacts")
    refused(run("standard", "--model", trained_dir, "--out", trained_dir / "std"), "is inside --model")
    root = tmp_path / "graphs"
    fake_artifact(root / "fp32-full", precision="fp32")
    user_folder(root, "std-fp32-o2")
    refused(run("standard", "--model", trained_dir, "--out", root), "std-fp32-o2 is a non-empty folder that is not a "
                                                                     "standard-recipe artifact")
    assert (user / "a.txt").read_text() == "keep" and (root / "std-fp32-o2" / "a.txt").read_text() == "keep"
    fake_artifact(tmp_path / "std" / "std-int8-o2-dynamic", precision="int8", kind="standard")
    output.check_root(tmp_path / "std", RootKind.ARTIFACTS, standard_targets(tmp_path / "std"))  # (c)
    output.check_root(tmp_path / "new", RootKind.ARTIFACTS, standard_targets(tmp_path / "new"))  # (d)


def test_bench_checks_every_folder_and_its_report_before_the_first_export(trained_dir, tmp_path):
    from toolchain.evaluate.bench import _check_outputs
    from toolchain.core.settings import VerifySettings

    user = user_folder(tmp_path)
    refused(run("bench", "--model", trained_dir, "--config", REDUCED, "--out", user), "holds files but is not a folder")
    refused(run("bench", "--model", trained_dir, "--config", REDUCED, "--out", trained_dir), "is inside --model")
    exports = ["full", REDUCED]
    root = tmp_path / "bench"
    fake_artifact(root / "fp32-full", precision="fp32")
    user_folder(root, f"int8-{REDUCED_NAME}")  # written only after minutes of export: refused before them
    with pytest.raises(OutputError, match=f"int8-{REDUCED_NAME} is a non-empty folder that is not an INT8 artifact"):
        _check_outputs(trained_dir, root, exports, VerifySettings(), standard=True, plain_ort=True)
    with pytest.raises(OutputError, match="--report-dir .* holds files but is not a report folder"):
        _check_outputs(trained_dir, tmp_path / "new", exports, VerifySettings(report_dir=user), standard=True,
                       plain_ort=True)
    _check_outputs(trained_dir, tmp_path / "new", exports, VerifySettings(), standard=True, plain_ort=True)  # (d)
    assert not (tmp_path / "new").exists()


def test_train_refuses_its_base_a_users_folder_and_snapshots_inside_out(trained_dir, tmp_path):
    from toolchain.core.settings import TrainSettings
    from toolchain.train.args import check_outputs

    before = files(trained_dir)
    refused(run("train", "--base", trained_dir, "--out", trained_dir, "--max-steps", 1), "is --base")
    assert files(trained_dir) == before
    user = user_folder(tmp_path)
    with pytest.raises(OutputError, match="not a model folder"):
        check_outputs(TrainSettings(base="minilm", out=str(user)))
    with pytest.raises(OutputError, match="is inside --out"):
        check_outputs(TrainSettings(base="minilm", out=str(tmp_path / "m"), snapshot_every=5,
                                snapshot_dir=str(tmp_path / "m" / "snapshots")))
    snapshots = tmp_path / "snapshots"
    (snapshots / "step-1").mkdir(parents=True)
    (snapshots / "step-1" / "qtool_train.json").write_text("{}")  # a snapshot: this is a folder of snapshots
    user_folder(snapshots, "step-5")
    with pytest.raises(OutputError, match="step-5 is a non-empty folder that is not a model folder"):
        check_outputs(TrainSettings(base="minilm", out=str(tmp_path / "m"), snapshot_every=5, snapshot_dir=str(snapshots)))
    with pytest.raises(OutputError, match="holds --train-file"):
        check_outputs(TrainSettings(base="minilm", out=str(user), train_file=str(user / "a.txt")))
    for marker in ("config.json", "checkpoint/other-framework.ckpt"):  # another framework's model folder: not ours
        foreign = user_folder(tmp_path, "foreign-" + marker.split("/")[0])
        (foreign / marker).parent.mkdir(parents=True, exist_ok=True)
        (foreign / marker).write_text("{}")
        with pytest.raises(OutputError, match="not a model folder"):
            check_outputs(TrainSettings(base="minilm", out=str(foreign)))
        assert (foreign / "a.txt").read_text() == "keep"
    check_outputs(TrainSettings(base="minilm", out=str(trained_dir.parent / "again")))  # (d)
    shutil.copytree(trained_dir, tmp_path / "previous")
    (tmp_path / "previous" / "qtool_train.json").write_text("{}")  # the record `qtool train` leaves in what it wrote
    check_outputs(TrainSettings(base=str(trained_dir), out=str(tmp_path / "previous")))  # (c) a model folder is replaced
    assert (user / "a.txt").read_text() == "keep"


def test_search_out_replaces_only_a_search_result(trained_dir, tmp_path):
    from toolchain.search.run import check_out
    from toolchain.core.settings import SearchSettings

    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    refused(run("search", "--model", trained_dir, "--trials", 1, "--out", notes), "is not a `qtool search` result")
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"layers": 6, "coefficients": {}, "graphs": []}))
    refused(run("search", "--model", trained_dir, "--trials", 1, "--latency-model", latency, "--out", latency),
            "is --latency-model")
    journal = tmp_path / "study.log"
    journal.write_text("journal")
    with pytest.raises(OutputError, match="is --storage"):
        check_out(journal, trained_dir, SearchSettings(storage=f"sqlite:///{journal}"))
    assert notes.read_text() == "keep" and journal.read_text() == "journal"
    previous = tmp_path / "front.json"
    previous.write_text(json.dumps({"objective": {}, "pareto": [], "evaluated": []}))
    assert check_out(previous, trained_dir, SearchSettings()) == previous  # (c)
    assert check_out(tmp_path / "new" / "front.json", trained_dir, SearchSettings())  # (d)


def test_fit_latency_out_replaces_only_a_latency_model(exported_root, tmp_path):
    from toolchain.evaluate.latency import check_out

    before = files(exported_root)
    notes = tmp_path / "notes.json"
    notes.write_text("keep")
    refused(run("fit-latency", exported_root, "--out", notes), "is not a `qtool fit-latency` latency model")
    refused(run("fit-latency", exported_root, "--out", exported_root / "fp32-full" / "latency.json"),
            "is inside GRAPHS")
    assert files(exported_root) == before and notes.read_text() == "keep"
    previous = tmp_path / "latency.json"
    previous.write_text(json.dumps({"layers": 6, "coefficients": {}, "graphs": []}))
    assert check_out(previous, [exported_root / "fp32-full"]) == previous  # (c)
    assert check_out(exported_root / "latency.json", [exported_root / "fp32-full"])  # (d): beside the graphs


def test_verify_report_dir_never_lands_on_a_users_files(exported_root, tmp_path):
    from toolchain.evaluate.verify import report_destination

    before = files(exported_root)
    user = user_folder(tmp_path)
    refused(run("verify", exported_root, "--limit", 2, "--report-dir", user), "holds files but is not a report folder")
    refused(run("verify", exported_root, "--limit", 2, "--report-dir", exported_root / "fp32-full"), "is an artifact")
    assert files(exported_root) == before and (user / "a.txt").read_text() == "keep"
    stray = fake_artifact(tmp_path / "stray" / "fp32-full", precision="fp32").parent  # an artifact root ...
    (stray / "report.md").write_text("my own report")  # ... with a report.md qtool did not write
    with pytest.raises(OutputError, match="holds report.md but no report.json"):
        report_destination(exported_root, stray)
    previous = tmp_path / "reports"
    previous.mkdir()
    (previous / "report.json").write_text(json.dumps({"rows": [], "latency": {}, "machine": {}}))
    (previous / "report.md").write_text("the previous run's")
    assert report_destination(exported_root, previous) == previous  # (c) re-running replaces its report
    assert report_destination(exported_root, None) == exported_root  # the default: beside the artifacts
    assert report_destination(exported_root, tmp_path / "new") == tmp_path / "new"  # (d)
    assert not (tmp_path / "new").exists()  # nothing is created before the run
