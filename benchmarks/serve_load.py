"""Loopback load figure for `qtool serve`: questions/s and p50/p99 latency at max batch 1 and 8.

Closed-loop clients (each sends its next SQuAD dev question as soon as the last is answered) against the
server in this process on 127.0.0.1. Several artifacts are measured side by side: every repeat runs each
setting for each artifact in turn, and the summary gives the median and range over repeats, and each
artifact's questions/s relative to the first one's in the same repeat. Not a test; about 20 s per run:

    python benchmarks/serve_load.py graphs/a/int8-X graphs/b/int8-X --seconds 20 --repeats 3

With --runtime (a run-time configuration graph, #18) it compares instead, at rising client counts, on SQuAD dev
paragraphs and documents (two neighbouring paragraphs each side): fixed full, fixed smallest menu entry
(every request names it) and adaptive serving (`--latency-target-ms` per workload): questions/s, p50/p99, the
share of answers per configuration and the F1 of the answers:

    python benchmarks/serve_load.py --runtime runs/r18/int8-runtime --target paragraphs=600 --target documents=1500 \
        --client-counts 1,4,16 --seconds 15 --repeats 3 --out results/runtime-configuration-graph/serve-adaptive-18.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from qtool_runtime import Artifact
from qtool_runtime.serve import ServerThread


def dev_questions(limit: int) -> list[dict]:
    """The first `limit` SQuAD v1.1 dev questions as request bodies (read with the stdlib: no toolchain needed)."""
    squad_dir = os.environ.get("QTOOL_SQUAD_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "squad")
    with open(os.path.join(squad_dir, "dev-v1.1.json"), encoding="utf-8") as fh:
        data = json.load(fh)["data"]
    out = [{"question": qa["question"], "context": p["context"]} for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return out[:limit]


def run(url: str, bodies: list[dict], clients: int, seconds: float, warmup: float,
        answers: dict[int, dict] | None = None) -> dict:
    """Closed-loop load for `warmup` + `seconds`; latencies of requests finished inside the timed part only.
    `answers` (if given) collects the last answer to each body, by its index."""
    latencies: list[float] = []
    lock = threading.Lock()
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    def client(k: int) -> None:
        i = k
        while True:
            index = i % len(bodies)
            body = json.dumps(bodies[index]).encode()
            i += clients
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            req = urllib.request.Request(url + "/answer", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert resp.status == 200
                reply = json.loads(resp.read())
            if answers is not None:
                answers[index] = reply
            t1 = time.perf_counter()
            if t0 >= t_start and t1 <= t_end:
                with lock:
                    latencies.append(t1 - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000.0
    return {"questions": len(ms), "questions_per_s": round(len(ms) / seconds, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def _child(url: str, bodies: list[dict], clients: int, seconds: float, warmup: float, out) -> None:
    answers: dict[int, dict] = {}
    row = run(url, bodies, clients, seconds, warmup, answers)
    out.put((row, answers))


def run_elsewhere(url: str, bodies: list[dict], clients: int, seconds: float, warmup: float,
                  answers: dict[int, dict]) -> dict:
    """`run` from a separate client process: client threads in the server's process would hold its GIL and put
    their own stalls into the server's latency (a deployment's clients are elsewhere)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_child, args=(url, bodies, clients, seconds, warmup, out))
    child.start()
    row, got = out.get()
    child.join()
    answers.update(got)
    return row


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def summarise(runs: list[dict], names: list[str]) -> list[dict]:
    """Median and range over repeats per (artifact, setting); questions/s relative to the first artifact."""
    out = []
    for setting in dict.fromkeys((r["max_batch"], r["clients"]) for r in runs):
        first = {r["repeat"]: r["questions_per_s"] for r in runs if r["artifact"] == names[0] and (r["max_batch"], r["clients"]) == setting}
        for name in names:
            rows = [r for r in runs if r["artifact"] == name and (r["max_batch"], r["clients"]) == setting]
            qps = [r["questions_per_s"] for r in rows]
            p99 = [r["p99_ms"] for r in rows]
            ratio = [r["questions_per_s"] / first[r["repeat"]] for r in rows]
            out.append({"artifact": name, "max_batch": setting[0], "clients": setting[1],
                        "questions_per_s": [round(float(np.median(qps)), 1), min(qps), max(qps)],
                        "p99_ms": [round(float(np.median(p99)), 1), min(p99), max(p99)],
                        "p50_ms_median": round(float(np.median([r["p50_ms"] for r in rows])), 1),
                        "vs_first": [round(float(np.median(ratio)), 2), round(min(ratio), 2), round(max(ratio), 2)],
                        "mean_batch": round(float(np.median([r["mean_batch"] for r in rows])), 2)})
    return out


def adaptive(args) -> dict:
    """Fixed full, fixed smallest and adaptive serving of one run-time configuration graph (see the docstring)."""
    from toolchain.data import squad

    kit = Artifact.open(args.runtime, threads=args.threads)
    times = kit.measure_menu(rounds=7)
    smallest = min(kit.menu, key=lambda e: times.predict(kit.label(e), [kit.seq_len]))
    targets = dict(t.split("=", 1) for t in args.target)
    missing = [w for w in ("paragraphs", "documents") if w not in targets]
    if missing:
        raise SystemExit(f"--target WORKLOAD=MS is missing for {missing}")
    workloads = {"paragraphs": squad.load_squad("dev", limit=400),
                 "documents": squad.load_squad("dev", limit=400, neighbours=squad.DOCUMENT_NEIGHBOURS)}
    modes = {"fixed full": ({}, None), "fixed smallest": ({"config": smallest.label}, None)}
    runs = []
    for repeat in range(args.repeats):
        for name, examples in workloads.items():
            target = float(targets[name])
            for clients in args.client_counts:
                by_mode: dict[str, tuple[dict, dict[int, dict]]] = {}
                for mode, (extra, latency_target) in {**modes, "adaptive": ({}, target)}.items():
                    bodies = [{"question": e.question, "context": e.context, **extra} for e in examples]
                    answers: dict[int, dict] = {}
                    with ServerThread(kit, max_batch=8, max_wait_ms=args.max_wait_ms,
                                      latency_target_ms=latency_target) as url:
                        row = run_elsewhere(url, bodies, clients, args.seconds, args.warmup, answers)
                        health = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
                        stats = health["stats"]
                    answered = [examples[i] for i in answers]
                    f1 = squad.squad_scores({examples[i].id: a["text"] for i, a in answers.items()}, answered)["f1"]
                    row = {"repeat": repeat, "workload": name, "mode": mode, "clients": clients, "target_ms": target,
                           **row, "meets_target": row["p99_ms"] <= target, "f1": round(f1, 2),
                           "f1_questions": len(answered), "configs": stats["configs"], "slowdown": health["slowdown"], "pressure": health["pressure"],
                           "mean_batch": round(stats["questions"] / max(1, stats["batches"]), 2)}
                    by_mode[mode] = (row, answers)
                common = set.intersection(*(set(a) for _, a in by_mode.values()))  # F1 on the same questions
                for mode, (row, answers) in by_mode.items():
                    row["f1_common"] = round(squad.squad_scores({examples[i].id: answers[i]["text"] for i in common},
                                                                [examples[i] for i in sorted(common)])["f1"], 2)
                    row["common_questions"] = len(common)
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    return {"artifact": str(args.runtime), "menu_times": times.to_dict(), "smallest": smallest.label,
            "targets_ms": targets, "cpu": cpu_model(), "cores": os.cpu_count(), "ort_threads": args.threads or "all cores",
            "seconds": args.seconds, "repeats": args.repeats, "summary": summarise_adaptive(runs), "runs": runs}


def summarise_adaptive(runs: list[dict]) -> list[dict]:
    """Median and range over repeats of questions/s, p99 and F1 per (workload, clients, mode)."""
    out = []
    for key in dict.fromkeys((r["workload"], r["clients"], r["mode"]) for r in runs):
        rows = [r for r in runs if (r["workload"], r["clients"], r["mode"]) == key]

        def stat(field: str) -> list[float]:
            values = [r[field] for r in rows]
            return [round(float(np.median(values)), 2), min(values), max(values)]

        out.append({"workload": key[0], "clients": key[1], "mode": key[2], "target_ms": rows[0]["target_ms"],
                    "questions_per_s": stat("questions_per_s"), "p50_ms": stat("p50_ms"), "p99_ms": stat("p99_ms"),
                    "f1": stat("f1"), "f1_common": stat("f1_common"), "meets_target": [r["meets_target"] for r in rows]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*")
    parser.add_argument("--runtime", default=None, help="a run-time configuration graph: fixed vs adaptive serving")
    parser.add_argument("--target", action="append", default=[], help="WORKLOAD=MS, the latency target (with --runtime)")
    parser.add_argument("--client-counts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the batched settings")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over every artifact and setting")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--out", default=None, help="write every run and the summary here (JSON)")
    args = parser.parse_args()
    if args.runtime:
        report = adaptive(args)
        print(json.dumps(report["summary"], indent=1))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2)
        return
    kits = {f"{Path(a).resolve().parent.name}/{Path(a).name}": Artifact.open(a, threads=args.threads) for a in args.artifacts}
    bodies = dev_questions(400)
    runs = []
    for repeat in range(args.repeats):
        for max_batch, clients in ((1, 1), (1, args.clients), (8, args.clients)):
            for name, kit in kits.items():
                with ServerThread(kit, max_batch=max_batch, max_wait_ms=args.max_wait_ms) as url:
                    row = run(url, bodies, clients, args.seconds, args.warmup)
                    stats = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())["stats"]
                row = {"repeat": repeat, "artifact": name, "max_batch": max_batch, "clients": clients, **row,
                       "mean_batch": round(stats["questions"] / max(1, stats["batches"]), 2),
                       "windows_per_run": kit.batch_size}
                runs.append(row)
                print(json.dumps(row), flush=True)
    report = {"artifacts": {n: {"precision": k.manifest["precision"],
                                "recipe": ((k.manifest.get("quantization") or {}).get("recipe") or {}).get("name"),
                                "windows_per_run": k.batch_size} for n, k in kits.items()},
              "cpu": cpu_model(), "cores": os.cpu_count(), "ort_threads": args.threads or "all cores",
              "load_average": os.getloadavg(), "max_wait_ms": args.max_wait_ms, "seconds": args.seconds,
              "repeats": args.repeats, "summary": summarise(runs, list(kits)), "runs": runs}
    print(json.dumps(report["summary"], indent=1))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
