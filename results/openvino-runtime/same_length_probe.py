"""The probe behind the study's same-length figures: graphs timed on 20 dev document windows that are all 352
tokens long (so every call has the same input width), interleaved rounds after warm-up, each OpenVINO graph at its
manifest's precision or forced to FP32. Run from the checkout after run.sh has built $G.

    python results/openvino-runtime/same_length_probe.py /tmp/qtool-openvino-runtime
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from qtool_runtime.engines import openvino_session, ort_session

G = Path(sys.argv[1])
tok = Tokenizer.from_file(str(G / "ship/int8-full/tokenizer.json"))
tok.no_padding()
tok.no_truncation()
dev = json.load(open(Path(__file__).resolve().parents[3] / "shared/squad/dev-v1.1.json"))
windows = []
for article in dev["data"][10:30]:
    paragraphs = article["paragraphs"]
    encoded = tok.encode(paragraphs[2]["qas"][0]["question"], " ".join(p["context"] for p in paragraphs[:5]))
    ids = encoded.ids[:352]
    ids[-1] = 102  # [SEP]
    windows.append({"input_ids": np.array([ids]), "attention_mask": np.ones((1, 352), np.int64),
                    "token_type_ids": np.array([encoded.type_ids[:352]])})
graphs = {  # label: (folder, runtime, FP32 where the graph says FP32)
    "(c)": ("std/std-int8-openvino-nncf", "openvino", False),
    "212 onnxruntime": ("ship/int8-212-194-189-96-81-51-answer", "onnxruntime", True),
    "212 static-openvino": ("ov/int8-212-194-189-96-81-51-answer", "openvino", False),
    "212 NNCF": ("nncf/nncf-212-194-189-96-81-51-answer", "openvino", False),
    "315,240 onnxruntime": ("ship/int8-315-240-200-140-100-40-answer", "onnxruntime", True),
    "315,240 static-openvino": ("ov/int8-315-240-200-140-100-40-answer", "openvino", False),
    "315,240 static-openvino, FP32": ("ov/int8-315-240-200-140-100-40-answer", "openvino", True),
    "315,240 NNCF": ("nncf/nncf-315-240-200-140-100-40-answer", "openvino", False),
}
sessions = {}
for label, (folder, runtime, exact) in graphs.items():
    path = G / folder / "model.onnx"
    session = openvino_session(path, 2, exact=exact) if runtime == "openvino" else ort_session(path, 2)
    sessions[label] = (session, [i.name for i in session.get_inputs()])
ms = {label: [] for label in sessions}
for _ in range(5):
    for label, (session, names) in sessions.items():
        for w in windows[:3]:
            session.run(None, {k: w[k] for k in names})
        times = []
        for w in windows:
            feed = {k: w[k] for k in names}
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        ms[label].append(1000 * float(np.median(times)))
peer = np.median(ms["(c)"])
for label, values in ms.items():
    print(f"{label:<30} {np.median(values):6.2f} ms ({min(values):.2f}-{max(values):.2f})  {peer / np.median(values):.2f}x (c)")
