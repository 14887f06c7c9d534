"""Self-describing artifact folders: model.onnx, tokenizer files and a manifest a deployment team can check.

A folder is written under a temporary name and renamed into place, so a failed step never leaves a half
artifact behind. The manifest records sha256 of every other file; `check_artifact` re-hashes them.
"""

from __future__ import annotations

import subprocess
import datetime as _dt
import json
import platform
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from qtool_runtime.contract import FORMAT, MANIFEST, format_of, sha256  # noqa: F401
from qtool_runtime.errors import QtoolError
from qtool_runtime.kit import inside

from ..core import atomic

if TYPE_CHECKING:
    from .output import OutputKind

GRAPH = "model.onnx"


class ArtifactError(QtoolError, ValueError):
    """An artifact folder that is missing, incomplete or altered."""


def source_commit() -> str | None:
    """The git commit of the qtool checkout running (None outside a git checkout): which code made a report."""

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the graph, for reproducing or trusting it."""
    versions = {"python": platform.python_version()}
    for dist in ("qtool", "torch", "transformers", "onnx", "onnxruntime", "onnx-neural-compressor", "numpy",
                 "openvino", "nncf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextmanager
def staging(dest: Path, kind: OutputKind) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; on success it replaces `dest`, on error or SIGTERM it vanishes.

    Commands check `dest` against their inputs before any work (`toolchain.artifact.output`); it is checked again here, where
    the replacing happens, so no caller ever replaces something that is not an artifact of `kind`."""
    from .output import check_target  # output reads manifests (manifest.py imports this module)

    check_target(dest, kind)
    with atomic.staging_dir(dest) as tmp:
        yield tmp


def copy_files_besides_graph(src: Path, files: dict[str, str], graph: str, dest: Path) -> None:
    """Copy an artifact's listed files other than its graph (tokenizer and the like) into `dest`: a graph written from
    another (quantized, routed) ships the same tokenizer."""
    for name in files:
        if name != graph:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dest / name)


def opset_of(model) -> int:
    """The opset a ModelProto is stamped with in ONNX's default domain (what a manifest's `opset` records)."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Hash every file in `folder` into the manifest and write it atomically."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = {**manifest, "format": format_of(manifest), "files": files}
    manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    manifest.setdefault("versions", tool_versions())
    atomic.write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a qtool artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ArtifactError(f"{path} is nested too deeply to be a manifest") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(manifest).__name__}")
    if manifest.get("format") != format_of(manifest):
        raise ArtifactError(f"{path}: unknown format {manifest.get('format')!r}, expected {format_of(manifest)}")
    return manifest


def check_artifact(folder: str | Path) -> dict:
    """Re-hash every file the manifest lists; raise on anything missing or changed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(f"{folder}: the manifest's 'files' must map file names to sha256 digests")
    for name in files:
        if not inside(folder, name):
            raise ArtifactError(f"{folder}: the manifest lists {name!r}, which is not a file inside the folder "
                                "(a path or symlink that leads out of it)")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{folder}: {name} is listed in the manifest but missing")
        if sha256(path) != digest:
            raise ArtifactError(f"{folder}: {name} does not match its sha256 in the manifest (altered or corrupt)")
    if GRAPH not in manifest["files"]:
        raise ArtifactError(f"{folder}: manifest lists no {GRAPH}")
    return manifest


def update_manifest(folder: str | Path, **fields) -> dict:
    """Merge fields (e.g. metrics) into an artifact's manifest; file hashes are re-checked first."""
    folder = Path(folder)
    manifest = check_artifact(folder)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    return write_manifest(folder, manifest)


def find_artifacts(root: str | Path) -> list[Path]:
    """Artifact folders at `root` itself or one level below it, in name order.

    Dot-named folders are skipped: they are staging leftovers of an interrupted write, never artifacts.
    """
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such artifact folder: {root}")
    found = sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()
    )
    if not found:
        raise ArtifactError(f"{root} holds no qtool artifacts (folders with {MANIFEST})")
    return found
