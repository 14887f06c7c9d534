"""Bad input and interruptions: atomic writes, SIGTERM cleanup, checkpoints that are not QA models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolchain import artifact, atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_staging_dir_replaces_dest_only_on_success(tmp_path):
    dest = tmp_path / "art"
    with atomic.staging_dir(dest) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (dest / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic.staging_dir(dest) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("failed half way")
    assert (dest / "a.txt").read_text() == "one"  # the previous version survives a failed rewrite
    with atomic.staging_dir(dest) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging or .old folders left


def test_atomic_files_and_folders_get_normal_permissions(tmp_path, umask_022):
    with artifact.staging(tmp_path / "art") as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
        artifact.write_manifest(tmp, {})
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o755  # tempfile.mkdtemp would give 0o700
    assert (tmp_path / "art" / artifact.MANIFEST).stat().st_mode & 0o777 == 0o644
    atomic.write_text(tmp_path / "t.json", "{}")
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "t.json"]


def test_sigterm_in_process_cleans_up_and_restores_the_handler(tmp_path):
    def previous(signum, frame):  # pragma: no cover - never called
        pass

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(SystemExit) as info:
            with atomic.staging_dir(tmp_path / "art") as tmp:
                (tmp / "big.bin").write_bytes(b"0" * 1000)
                assert signal.getsignal(signal.SIGTERM) is not previous
                os.kill(os.getpid(), signal.SIGTERM)
        assert info.value.code == 143
        assert list(tmp_path.iterdir()) == []
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


STAGING_CHILD = textwrap.dedent(
    """
    import sys, time
    from toolchain import artifact
    with artifact.staging(sys.argv[1]) as tmp:
        (tmp / "model.onnx").write_bytes(b"0" * 100000)
        print(tmp, flush=True)
        time.sleep(60)
    """
)


def test_sigterm_during_staging_leaves_nothing_behind(tmp_path):
    """`kill` (SIGTERM) of a process that is writing an artifact: no staging folder, no artifact, exit 143."""
    dest = tmp_path / "graphs" / "fp32-full"
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGING_CHILD, str(dest)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        staged = Path(proc.stdout.readline().strip())
        assert staged.is_dir() and staged.name.startswith(".fp32-full.")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()
        proc.wait()
    assert not staged.exists()
    assert list(dest.parent.iterdir()) == []


def test_find_artifacts_skips_staging_leftovers(tmp_path):
    for name in ("fp32-full", ".fp32-x.1a2b3c4d.tmp", ".int8-y.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / artifact.MANIFEST).write_text(json.dumps({"format": artifact.FORMAT}))
    assert artifact.find_artifacts(tmp_path) == [tmp_path / "fp32-full"]
    (tmp_path / "fp32-full" / artifact.MANIFEST).unlink()
    with pytest.raises(artifact.ArtifactError, match="holds no qtool artifacts"):
        artifact.find_artifacts(tmp_path)
