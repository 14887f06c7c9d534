"""A search study many workers share: its storage, the lock that keeps its budget exact, the worker loop, and the
one-time finish (confirmation) whichever worker reaches the budget first.

Why a lock of our own: optuna hands out waiting trials atomically, but "is there budget left?" followed by `ask`
is two steps; without a lock, N workers finishing together each start one more trial. The lock is held only from
that check to the trial's creation (milliseconds), never while a trial is scored. It is PostgreSQL's advisory lock
for a PostgreSQL storage (released by the server if the worker dies), an flock on the file for a journal or
SQLite file, and nothing for a study in memory.

Why heartbeats: a worker killed mid-trial leaves its trial RUNNING forever. RDB storages (PostgreSQL, SQLite) record
a heartbeat per running trial; a trial silent for `GRACE_SECONDS` is failed by the next worker that looks and
re-queued once more (optuna's `RetryHeartbeatStaleTrialCallback`), so the budget still ends in exactly N complete trials.
A journal file has no heartbeats: a killed worker's trial stays running and the study may end one trial over.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from qtool_runtime.contract import sha256

from ..core.errors import InputError

HEARTBEAT_SECONDS = 5  # a running trial's worker writes a heartbeat this often
GRACE_SECONDS = 20  # a running trial without a heartbeat for this long is failed and queued again
MAX_RETRY = 3  # a trial killed this many times is left failed (a configuration that kills its worker)
POLL_SECONDS = 2.0  # how often an idle worker looks again (others' trials running, a confirmation under way)
CLAIM_GRACE_SECONDS = 60  # a confirmation whose worker has not written for this long is taken over


class StorageError(InputError):
    """The study's storage cannot be reached or opened (server down, bad password, no such database)."""


def describe(storage: str | None) -> str:
    """The storage as it may be printed: an RDB URL without its password."""
    if storage is None:
        return "memory"
    if "://" not in storage:
        return storage
    scheme, rest = storage.split("://", 1)
    if "@" in rest:
        user, host = rest.rsplit("@", 1)
        rest = f"{user.split(':', 1)[0]}@{host}"
    return f"{scheme}://{rest}"


def _rdb_url(storage: str) -> str:
    """postgresql:// picks the driver qtool installs (psycopg 3, the `distributed` extra); SQLAlchemy's own default
    is psycopg2. A URL that names its driver is kept."""
    if storage.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg  # noqa: F401  (optional: the `distributed` extra)
        except ImportError:
            raise StorageError("a PostgreSQL storage needs the driver: pip install 'qtool[distributed]'") from None
        return "postgresql+psycopg://" + storage.split("://", 1)[1]
    return storage


def open_storage(storage: str | None) -> optuna.storages.BaseStorage | None:
    """None: in memory. A URL with '://': an RDB (sqlite:///file.db, postgresql://...) with heartbeats and retries.
    Else a journal file. An unreachable server, a bad password or a missing database is one StorageError line."""
    if storage is None:
        return None
    if "://" not in storage:
        _check_journal(Path(storage))
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(storage)))
    from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

    raced: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(_rdb_url(storage), heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                                  engine_kwargs=_engine_options(storage))
        except (IntegrityError, ProgrammingError) as exc:
            # workers starting together on a new database race to create optuna's tables: the loser looks again
            raced = exc
            time.sleep(0.5 * (attempt + 1))
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise StorageError(f"cannot open the study storage {describe(storage)}: {_reason(exc)}") from None
    raise StorageError(f"cannot open the study storage {describe(storage)}: {_reason(raced)}")


def _engine_options(storage: str) -> dict:
    if storage.startswith("postgres"):  # postgres:// and postgresql://, with or without a driver
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def _reason(exc: BaseException) -> str:
    """The first line that says why (SQLAlchemy wraps the driver's message with a long suffix)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("(Background")]
    return lines[0] if lines else type(exc).__name__


def _check_journal(path: Path) -> None:
    """A journal file optuna would append to must be one: another file (notes, a JSON of something else) is refused
    before optuna writes a line into it or fails on it with a traceback."""
    if path.is_dir():
        raise InputError(f"--storage {path} is a folder; give a journal file")
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with path.open(encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except (ValueError, UnicodeDecodeError, RecursionError):
        first = None
    if not (isinstance(first, dict) and "op_code" in first):
        raise InputError(f"--storage {path} exists and is not an optuna journal; give a new file or one a qtool "
                         "search wrote")


def storage_file(storage: str | None) -> Path | None:
    """The local file a storage lives in (a journal file, sqlite:///FILE), None for memory or a remote database."""
    if storage is None or ("://" in storage and not storage.startswith("sqlite:///")):
        return None
    return Path(storage.removeprefix("sqlite:///"))


def call_storage(action: Callable[[], Any], storage: str | None) -> Any:
    """Run `action`; a database that goes away mid-run is one StorageError line, not a traceback."""
    from sqlalchemy.exc import OperationalError

    try:
        return action()
    except OperationalError as exc:
        raise StorageError(f"lost the study storage {describe(storage)}: {_reason(exc)}") from None


class StudyLock:
    """Held from "is there budget left?" to the new trial's creation; `release` may be called twice."""

    def __init__(self, acquire: Callable[[], None], release: Callable[[], None]):
        self._acquire, self._release, self._held = acquire, release, False

    def acquire(self) -> None:
        self._acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._release()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def study_lock(backend: optuna.storages.BaseStorage | None, storage: str | None, study_name: str) -> StudyLock:
    """The lock for `study_name` in this storage (see the module's docstring for which kind)."""
    if backend is None:
        local = threading.Lock()
        return StudyLock(local.acquire, local.release)
    path = storage_file(storage)
    if path is not None:
        return _file_lock(path.with_name(path.name + ".qtool-lock"))
    return _advisory_lock(backend, study_name)


def _file_lock(path: Path) -> StudyLock:
    handle: dict[str, int] = {}

    def acquire() -> None:
        handle["fd"] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(handle["fd"], fcntl.LOCK_EX)

    def release() -> None:
        fd = handle.pop("fd")
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    return StudyLock(acquire, release)


def _advisory_lock(backend: RDBStorage, study_name: str) -> StudyLock:
    """A PostgreSQL session advisory lock keyed by the study name, on a connection of its own."""
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    conn = backend.engine.connect()

    def acquire() -> None:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()

    def release() -> None:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()

    return StudyLock(acquire, release)


@dataclass(frozen=True)
class Progress:
    """Where a shared study stands, as any worker (or `search --report`) sees it."""

    complete: int
    running: int
    waiting: int
    failed: int
    budget: int

    @property
    def done(self) -> bool:
        return self.complete >= self.budget

    def line(self) -> str:
        return (f"{self.complete}/{self.budget} trials complete, {self.running} running, {self.waiting} queued"
                + (f", {self.failed} failed (killed workers; retried)" if self.failed else ""))


def progress_of(study: optuna.Study, budget: int) -> Progress:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return Progress(states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING),
                    states.count(TrialState.WAITING), states.count(TrialState.FAIL), budget)


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) trials whose worker stopped writing heartbeats: what optuna does before each new trial,
    done here too so an idle worker, waiting on trials that will never finish, notices them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _next_step(study: optuna.Study, budget: int, *, heartbeats: bool) -> str:
    """'run' a trial, 'wait' for others' running trials (one may die and come back queued), or 'stop'."""
    p = progress_of(study, budget)
    if p.done:
        return "stop"
    if not heartbeats:  # a running trial cannot be told from a dead one: count only the complete ones
        return "run"
    if p.waiting > 0 or p.complete + p.running < budget:
        return "run"
    return "wait"


def run_budget(study: optuna.Study, objective: Callable, budget: int, lock: StudyLock, *, storage: str | None,
               on_progress: Callable[[Progress], None] = lambda p: None) -> None:
    """Add trials until the study holds `budget` complete ones, whoever else is adding them."""
    heartbeats = storage is not None and "://" in storage  # RDB storages are opened with heartbeats

    def unlocked(trial):
        lock.release()  # the trial exists: the next worker may look at the budget
        return objective(trial)

    while True:
        lock.acquire()
        try:
            call_storage(lambda: _fail_stale(study), storage)
            step = call_storage(lambda: _next_step(study, budget, heartbeats=heartbeats), storage)
            if step == "run":
                call_storage(lambda: study.optimize(unlocked, n_trials=1), storage)
        finally:
            lock.release()
        on_progress(call_storage(lambda: progress_of(study, budget), storage))
        if step == "stop":
            return
        if step == "wait":
            time.sleep(POLL_SECONDS)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def finish_once(study: optuna.Study, lock: StudyLock, compute: Callable[[], dict], *, key: int,
                log: Callable[[str], None] = print) -> dict:
    """The result of `compute` for this study at `key` (its complete trials): computed by one worker, stored in the
    study; the others wait for it, and take it over if its worker stops writing for CLAIM_GRACE_SECONDS."""
    me = worker_name()
    said = False
    while True:
        with lock:
            attrs = study.user_attrs
            stored = attrs.get("finish")
            if stored and stored.get("key") == key:
                return stored["result"]
            claim = attrs.get("finishing")
            mine = not claim or claim.get("key") != key or time.time() - claim["beat"] > CLAIM_GRACE_SECONDS
            if mine:
                study.set_user_attr("finishing", {"by": me, "key": key, "beat": time.time()})
        if mine:
            with _beating(study, me, key):
                result = compute()
            study.set_user_attr("finish", {"key": key, "result": result, "by": me})
            return result
        if not said:
            log(f"  the confirmation is under way in worker {claim['by']}; waiting for it")
            said = True
        time.sleep(POLL_SECONDS)


class _beating:
    """Rewrite the claim's time every few seconds while this worker computes the finish."""

    def __init__(self, study: optuna.Study, me: str, key: int):
        self.study, self.me, self.key, self.stop = study, me, key, threading.Event()

    def __enter__(self) -> None:
        def beat() -> None:
            while not self.stop.wait(HEARTBEAT_SECONDS):
                self.study.set_user_attr("finishing", {"by": self.me, "key": self.key, "beat": time.time()})

        self.thread = threading.Thread(target=beat, daemon=True)
        self.thread.start()

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def file_digest(path: Path) -> str:
    """A file's sha256, short: enough to tell one SQuAD file or weights file from another."""
    return sha256(path)[:16]


def model_digest(model_dir: str | Path) -> str:
    """What identifies a model across machines (its folder path does not): its config and weights files' sha256."""
    folder = Path(model_dir)
    files = sorted(p for p in folder.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
    return hashlib.sha256("".join(f"{p.name}:{file_digest(p)}" for p in files).encode()).hexdigest()[:16]
