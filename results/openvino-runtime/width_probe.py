"""Same width every call (352 tokens) against alternating widths (352, 344, ...): what a change of input width costs
per call, per graph. Run from the checkout after run.sh has built /tmp/qtool-openvino-runtime."""
import json, time
from pathlib import Path

import numpy as np
from qtool_runtime.engines import openvino_session, ort_session
from tokenizers import Tokenizer
G = "/tmp/qtool-openvino-runtime/"
tok = Tokenizer.from_file(G + "ship/int8-full/tokenizer.json"); tok.no_padding(); tok.no_truncation()
sq = json.load(open(Path(__file__).resolve().parents[3] / "shared/squad/dev-v1.1.json"))
def win(a, n):
    ps = sq["data"][a]["paragraphs"]
    e = tok.encode(ps[2]["qas"][0]["question"], " ".join(p["context"] for p in ps[:5])); ids = e.ids[:n]; ids[-1] = 102
    return {"input_ids": np.array([ids]), "attention_mask": np.ones((1, n), np.int64), "token_type_ids": np.array([e.type_ids[:n]])}
same = [win(10 + i, 352) for i in range(20)]
alternating = [win(10 + i, 352 - (i % 2) * 8) for i in range(20)]
graphs = {"(c)": (G + "std/std-int8-openvino-nncf", "ov"), "212 static-openvino": (G + "ov/int8-212-194-189-96-81-51-answer", "ov"),
          "315,240 static-openvino": (G + "ov/int8-315-240-200-140-100-40-answer", "ov"),
          "315,240 onnxruntime": (G + "ship/int8-315-240-200-140-100-40-answer", "ort")}
sess = {}
for k, (p, e) in graphs.items():
    s = openvino_session(p + "/model.onnx", 2, exact=False) if e == "ov" else ort_session(p + "/model.onnx", 2)
    sess[k] = (s, [i.name for i in s.get_inputs()])
res = {(k, w): [] for k in sess for w in ("same", "alternating")}
for r in range(6):
    for k, (s, names) in sess.items():
        for label, ws in (("same", same), ("alternating", alternating)):
            for w in ws[:4]: s.run(None, {n: w[n] for n in names})
            t = []
            for w in ws:
                f = {n: w[n] for n in names}; t0 = time.perf_counter(); s.run(None, f); t.append(time.perf_counter() - t0)
            if r: res[(k, label)].append(1000 * np.median(t))
for k in sess:
    a, b = np.median(res[(k, "same")]), np.median(res[(k, "alternating")])
    print(f"{k:<26} same width {a:6.2f} ms ({min(res[(k,'same')]):.2f}-{max(res[(k,'same')]):.2f})  alternating 352/344 {b:6.2f} ms ({min(res[(k,'alternating')]):.2f}-{max(res[(k,'alternating')]):.2f})  +{b - a:.2f} ms")
