"""Per-call timing, batch 1, interleaved: graphs on the same 24 document windows (300-383 tokens), each graph a
name=folder:engine argument (engine ort or ov; OpenVINO at its default precision). Ratios against the first.

    python results/calibration-methods/per_call_timing.py c=G/std/std-int8-openvino-nncf:ov x=G/ov/int8-...:ov
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from qtool_runtime.engines import openvino_session, ort_session

graphs = [a.split("=", 1) for a in sys.argv[1:]]
tok = Tokenizer.from_file(str(Path(graphs[0][1].rsplit(":", 1)[0]) / "tokenizer.json"))
tok.no_padding(); tok.no_truncation()
squad = json.load(open(Path(__file__).resolve().parents[3] / "shared/squad/dev-v1.1.json"))


def window(article: int, n: int) -> dict:
    paragraphs = squad["data"][article]["paragraphs"]
    e = tok.encode(paragraphs[2]["qas"][0]["question"], " ".join(p["context"] for p in paragraphs[:5]))
    ids = e.ids[:n]; ids[-1] = 102
    return {"input_ids": np.array([ids]), "attention_mask": np.ones((1, n), np.int64),
            "token_type_ids": np.array([e.type_ids[:n]])}


windows = [window(10 + i, 300 + (i * 7) % 84) for i in range(24)]
sessions = {}
for name, spec in graphs:
    folder, engine = spec.rsplit(":", 1)
    s = openvino_session(Path(folder) / "model.onnx", 2, exact=False) if engine == "ov" else ort_session(Path(folder) / "model.onnx", 2)
    sessions[name] = (s, [i.name for i in s.get_inputs()])
ms = {name: [] for name in sessions}
for r in range(7):  # round 0 is warm-up
    for name, (s, inputs) in sessions.items():
        feeds = [{k: w[k] for k in inputs} for w in windows]
        for f in feeds[:3]:
            s.run(None, f)
        t = []
        for f in feeds:
            t0 = time.perf_counter(); s.run(None, f); t.append(time.perf_counter() - t0)
        if r:
            ms[name].append(1000 * np.median(t))
first = next(iter(sessions))
for name in sessions:
    ratios = [a / b for a, b in zip(ms[first], ms[name])]
    print(f"{name:<28} {np.median(ms[name]):6.2f} ms  {first}/this {np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
