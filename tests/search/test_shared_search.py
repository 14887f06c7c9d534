"""A search shared by worker processes on a real PostgreSQL server (tests/pg_server.py starts one per session).

Each worker is `qtool search` in its own process, as on separate machines: the study's budget is exact, a worker
killed mid-trial loses nothing, a restart resumes, the confirmation runs once, and a worker with other settings or
a server that is not there is refused in one line."""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pg_server import free_port
from toolchain.core.errors import InputError
from toolchain.core.settings import SearchSettings
from toolchain.search.run import search_configs, search_report
from toolchain.search.shared_study import GRACE_SECONDS, StorageError, open_storage

# Small trials: six paragraph questions each, in the space LengthDrop trained.
QUICK = ["--questions", "6", "--neighbours", "0", "--min-ratio", "0.5", "--sampler", "evolution", "--population", "3"]


def _start(model: Path, url: str, study: str, out: Path, *options: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "toolchain.cli", "search", "--model", str(model), "--storage", url,
           "--study", study, "--out", str(out), *options]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})


def _finish(worker: subprocess.Popen) -> str:
    out, err = worker.communicate(timeout=900)
    assert worker.returncode == 0, err[-2000:]
    return out


@functools.lru_cache(maxsize=None)
def _storage(url: str):
    """One storage (one connection pool) per server for the test's own reads: polling with a new storage each time
    leaves connections open until the server refuses more ("too many clients") when the workers start slowly."""
    return open_storage(url)


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage(url))


def _wait_for(condition, what: str, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_three_workers_finish_one_study_with_exactly_its_budget(trained_dir, postgres, tmp_path):
    """Three processes started together on one study of 9 trials: exactly 9 complete trials, the confirmation
    computed by one of them and handed to the others, and `--report` from a fourth process says the same."""
    url, name = postgres.url(), "three-workers"
    workers = [_start(trained_dir, url, name, tmp_path / f"w{i}.json", "--trials", "9", "--seed", str(i),
                      "--confirm-questions", "6", *QUICK) for i in range(3)]
    logs = [_finish(w) for w in workers]
    study = _study(url, name)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 9 and len(study.trials) == 9  # no trial beyond the budget, none failed
    assert all(t.user_attrs["worker"].split(":")[1].isdigit() for t in complete)
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(3)]
    assert all(r["trials"] == 9 and r["complete"] for r in results)
    assert results[0]["confirmation"] is not None
    assert all(r["confirmation"] == results[0]["confirmation"] for r in results)
    confirmed_by = [log for log in logs if "  confirm " in log]  # the confirmation's rows are logged where it ran
    assert len(confirmed_by) == 1
    assert study.user_attrs["finish"]["by"] in {f"{socket.gethostname()}:{w.pid}" for w in workers}

    report = subprocess.run([sys.executable, "-m", "toolchain.cli", "search", "--model", str(trained_dir),
                             "--storage", url, "--study", name, "--report"], capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0, report.stderr
    assert "9/9 trials complete" in report.stdout and "  confirm " not in report.stdout  # read, not recomputed
    assert f"--config {results[0]['recommended']['config']}" in report.stdout


@pytest.mark.slow
def test_killed_workers_lose_no_trial_and_a_restart_resumes(trained_dir, postgres, tmp_path):
    """SIGKILL one of two workers mid-trial, then the other: their trials stay running until their heartbeats are
    GRACE_SECONDS old, then fail and are queued again; a worker started afterwards resumes the study and ends it
    with exactly its budget of complete trials, the killed ones retried with their own parameters."""
    url, name, budget = postgres.url(), "killed-workers", 5
    slow = ["--questions", "16", "--neighbours", "2", "--min-ratio", "0.5", "--sampler", "evolution",
            "--population", "3", "--trials", str(budget)]
    first, second = (_start(trained_dir, url, name, tmp_path / f"{n}.json", *slow, "--seed", str(i))
                     for i, n in enumerate(("first", "second")))

    def running_in(worker: subprocess.Popen) -> bool:
        try:
            trials = _study(url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            return False
        return any(t.user_attrs.get("worker") == f"{socket.gethostname()}:{worker.pid}" and len(t.params) == 6
                   for t in trials)  # mid-trial: its configuration drawn, its scoring under way

    _wait_for(lambda: running_in(first), "a trial running in the first worker")
    first.send_signal(signal.SIGKILL)
    _wait_for(lambda: running_in(second), "a trial running in the second worker")
    second.send_signal(signal.SIGKILL)
    for worker in (first, second):
        worker.wait(timeout=60)
    killed = _study(url, name).get_trials(states=(TrialState.RUNNING,))
    assert len(killed) == 2

    started = time.monotonic()
    _finish(_start(trained_dir, url, name, tmp_path / "third.json", *slow, "--seed", "2"))
    assert time.monotonic() - started > GRACE_SECONDS - 5  # it had to wait for the dead trials' heartbeats to age
    study = _study(url, name)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == budget
    assert sorted(t.number for t in failed) == sorted(t.number for t in killed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t): t for t in complete}
    for dead in failed:
        assert retried[dead.number].params == dead.params
    assert json.loads((tmp_path / "third.json").read_text())["trials"] == budget


def test_a_worker_with_other_settings_and_an_unreachable_server_are_refused_in_one_line(
        trained_dir, minilm_dir, postgres, tmp_path):
    url, name = postgres.url(), "refusals"
    _finish(_start(trained_dir, url, name, tmp_path / "a.json", "--trials", "1", *QUICK))

    def refused(*args: str) -> str:
        run = subprocess.run([sys.executable, "-m", "toolchain.cli", "search", *args], capture_output=True,
                             text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})
        assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr[-2000:]
        return run.stderr

    other_workload = [*QUICK[:2], "--neighbours", "2", *QUICK[4:]]
    assert "other settings (workloads)" in refused("--model", str(trained_dir), "--storage", url, "--study", name,
                                                   "--trials", "2", *other_workload)
    with pytest.raises(InputError, match=r"other settings \(.*model.*\)"):  # another model, however named
        search_configs(minilm_dir, SearchSettings(storage=url, study_name=name, trials=2, questions=6, neighbours=0,
                                                  min_ratio=0.5, sampler="evolution", population=3), log=print)
    dead = postgres.url(port=free_port())
    message = refused("--model", str(trained_dir), "--storage", dead, "--study", name, "--trials", "2", *QUICK)
    assert message.startswith("Error: cannot open the study storage postgresql://qtool@127.0.0.1") and "refused" in message
    for bad, why in ((postgres.url(password="not-it"), "password authentication failed"),
                     (postgres.url(database="no_such_db"), 'database "no_such_db" does not exist')):
        with pytest.raises(StorageError, match=why) as error:
            open_storage(bad)
        assert "\n" not in str(error.value) and "not-it" not in str(error.value)
    with pytest.raises(InputError, match="no study 'never-run'"):
        search_report(trained_dir, url, "never-run")
