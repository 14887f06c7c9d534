"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything is written under a temporary dot-name in the destination's own folder (so the final
`os.replace` never crosses a file system) and renamed into place on success. On any exception the
temporary is removed. SIGTERM (what `kill`, `timeout` and job schedulers send) would otherwise end the
process without running that cleanup, so while a write is in progress SIGTERM is turned into
`SystemExit(143)`, which unwinds through the cleanup and still ends the process with the usual status.
Temporaries get normal permissions (0777/0666 minus umask), not tempfile's private 0700/0600.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qtool_runtime.errors import QtoolError

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143: the status a process killed by SIGTERM reports

_guard_depth = 0  # nesting of sigterm_as_exit in the main thread
_previous_handler: object = None
_terminating = False


def _on_sigterm(signum: int, frame: object) -> None:
    """Raise once so cleanup runs; a second SIGTERM during that cleanup must not interrupt it."""
    global _terminating
    if _terminating:
        return
    _terminating = True
    raise SystemExit(SIGTERM_EXIT_CODE)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While active (main thread only: signal handlers cannot be set elsewhere), SIGTERM raises SystemExit."""
    global _guard_depth, _previous_handler, _terminating
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _guard_depth == 0:
        _previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    _guard_depth += 1
    try:
        yield
    finally:
        _guard_depth -= 1
        if _guard_depth == 0:
            previous = _previous_handler
            _previous_handler = None
            _terminating = False
            # None means the handler was installed from C; the default is the closest we can restore
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _temp_name(dest: Path, suffix: str) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and os.replace; never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        while True:
            tmp = _temp_name(path, ".tmp")
            try:
                # O_EXCL: never follow or reuse someone else's file; mode 0666 lets the umask decide
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Text version of write_bytes."""
    return write_bytes(path, text.encode(encoding))


def _make_staging_folder(dest: Path) -> Path:
    while True:
        tmp = _temp_name(dest, ".tmp")
        try:
            os.mkdir(tmp, 0o777)  # the umask applies, as for any folder the user creates
            return tmp
        except FileExistsError:
            continue


@contextmanager
def staging_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty dot-folder beside `dest`; on success it replaces `dest`, on any exception (or SIGTERM) it vanishes.

    An existing `dest` is moved aside first and removed only after the new folder is in place.
    """
    dest = Path(dest).absolute()
    if not dest.name:
        raise ValueError(f"cannot stage a folder at {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        tmp = _make_staging_folder(dest)
        try:
            yield tmp
            _move_into_place(tmp, dest)
        except BaseException:
            _remove(tmp)
            raise


class ConcurrentWriteError(QtoolError):
    """Other writers kept replacing the same destination while this one tried to finish."""


def _move_into_place(tmp: Path, dest: Path, attempts: int = 20) -> None:
    """Rename `tmp` to `dest`, moving an existing `dest` aside first. Another writer finishing the same
    destination at the same instant makes a rename fail (the folder is not empty, or already moved): try
    again, so the last complete writer wins and neither fails."""
    for _ in range(attempts):
        if not (dest.exists() or dest.is_symlink()):
            try:
                os.replace(tmp, dest)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another writer put its folder there first
        old = _temp_name(dest, ".old")
        try:
            os.replace(dest, old)
        except FileNotFoundError:
            continue  # another writer moved it aside first
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                _remove(old)  # a newer complete folder is in place; ours replaces it on the next try
                continue
            os.replace(old, dest)  # put the previous version back
            raise
        except BaseException:
            os.replace(old, dest)
            raise
        _remove(old)
        return
    raise ConcurrentWriteError(f"{dest} kept being replaced by other writers; nothing of this run was written")


def check_writable_dir(path: str | Path, what: str = "output folder", *, replaced: bool = False) -> Path:
    """Refuse, before any work, a destination that cannot be written: the nearest existing ancestor of
    `path` must be a writable folder (the folder itself is created later, atomically). `replaced`: `path` is
    renamed into place as a whole, so its parent is what must be writable, whatever `path` is now."""
    path = Path(path)
    probe = path.parent if replaced else path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: {probe} is not writable")
    return path
