"""Throughput of the two scale-out paths on this machine: search workers sharing one PostgreSQL study, and training
under torchrun. Prints a table and writes a JSON report.

Search: `qtool search` started as 1, 2 and 3 processes on one study of --trials trials (interleaved rounds, --repeats
times), each against a fresh study in one PostgreSQL server started for the run (tests/pg_server.py). Trials per
minute are counted between the first trial's start and the last one's end (model loading excluded), and wall time
from launch to the last exit. The database's load per trial is PostgreSQL's own count of committed transactions
and inserted rows (pg_stat_database).

Training: `qtool train` with 1 process (all cores) and `--nproc 2`, the same global batch, examples per second
from the run's record (loading excluded); the all-reduce of one step's gradients is timed alone (gloo, 2 processes).

    python benchmarks/scale_out.py --model ../shared/models/minilm-squad-lat-doc-match --out results/scale-out/report.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pg_server  # noqa: E402

from toolchain.search.shared_study import open_storage  # noqa: E402

SEARCH = ["--questions", "20", "--neighbours", "2", "--sampler", "evolution", "--population", "6"]
WORKERS = ((1, 2), (1, 1), (2, 1), (3, 1))  # (processes, threads each)


def _db_counts(url: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        commits, inserted = conn.execute("SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database "
                                         "WHERE datname = current_database()").fetchone()
    return commits, inserted


def search_round(model: str, url: str, study: str, processes: int, threads: int, trials: int) -> dict:
    before = _db_counts(url)
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "toolchain.cli", "search", "--model", model, "--storage", url,
                                 "--study", study, "--trials", str(trials), "--seed", str(i), *SEARCH],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
               for i in range(processes)]
    for w in workers:
        _, err = w.communicate()
        if w.returncode:
            raise SystemExit(f"a search worker failed:\n{err[-2000:]}")
    wall = time.monotonic() - started
    after = _db_counts(url)
    done = optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(states=(TrialState.COMPLETE,))
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {"processes": processes, "threads": threads, "trials": len(done), "wall_seconds": round(wall, 1),
            "trials_per_minute": round(60 * len(done) / span, 2), "trial_seconds": round(span / len(done), 3),
            "db_commits_per_trial": round((after[0] - before[0]) / len(done), 1),
            "db_rows_written_per_trial": round((after[1] - before[1]) / len(done), 1)}


def train_round(model: str, nproc: int, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "toolchain.cli", "train", "--base", model, "--out", str(out), "--limit", "2000",
           "--max-length", "256", "--batch-size", "16", "--max-steps", str(steps), "--length-drop", "--nproc",
           str(nproc), "--no-bf16"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if run.returncode:
        raise SystemExit(f"training failed:\n{run.stderr[-2000:]}")
    record = json.loads((out / "qtool_train.json").read_text())
    return {"processes": nproc, "examples_per_second": record["examples_per_second"], "steps": record["steps"]}


ALLREDUCE = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo"); n = int(os.environ["NUMEL"]); t = torch.ones(n)
for _ in range(2): dist.all_reduce(t)
times = []
for _ in range(10):
    s = time.perf_counter(); dist.all_reduce(t); times.append(time.perf_counter() - s)
if dist.get_rank() == 0: print(sorted(times)[5])
dist.destroy_process_group()
"""


def allreduce_seconds(numel: int) -> float:
    """The median of 10 all-reduces of `numel` float32 values between 2 processes on this machine (gloo)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(ALLREDUCE)
        script.flush()
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              script.name], capture_output=True, text=True,
                             env={**os.environ, "NUMEL": str(numel), "OMP_NUM_THREADS": "1"})
    if run.returncode:
        raise SystemExit(f"the all-reduce timing failed:\n{run.stderr[-2000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from transformers import AutoModelForQuestionAnswering

    params = sum(p.numel() for p in AutoModelForQuestionAnswering.from_pretrained(args.model).parameters())
    server = pg_server.start()
    search, train = [], []
    try:
        for r in range(args.repeats):
            for processes, threads in WORKERS:
                row = search_round(args.model, server.url(), f"r{r}-p{processes}-t{threads}", processes, threads,
                                   args.trials)
                search.append({**row, "repeat": r})
                print(row, flush=True)
            for nproc in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    row = train_round(args.model, nproc, args.train_steps, Path(tmp) / "m")
                train.append({**row, "repeat": r})
                print(row, flush=True)
    finally:
        server.stop()
    reduce_s = allreduce_seconds(params)
    report = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
              "model": args.model, "parameters": params, "search_options": SEARCH, "trials": args.trials,
              "search": search, "train": train,
              "allreduce": {"bytes": 4 * params, "seconds_2_processes_gloo": reduce_s},
              "summary": _summary(search, train)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


def _summary(search: list[dict], train: list[dict]) -> dict:
    def spread(values: list[float]) -> dict:
        return {"median": statistics.median(values), "low": min(values), "high": max(values)}

    out = {}
    for processes, threads in WORKERS:
        rows = [r for r in search if r["processes"] == processes and r["threads"] == threads]
        out[f"search {processes} x {threads} threads: trials/min"] = spread([r["trials_per_minute"] for r in rows])
        out[f"search {processes} x {threads} threads: db commits/trial"] = spread([r["db_commits_per_trial"] for r in rows])
    for nproc in (1, 2):
        out[f"train {nproc} processes: examples/s"] = spread([r["examples_per_second"] for r in train
                                                             if r["processes"] == nproc])
    return out


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
