"""OpenVINO 2026.4 on a qtool Drop-and-Restore graph compiled for a static input shape: the same padded window through
the dynamic-shape model and through the static one, and the unpadded window through the dynamic model. Run from the
checkout after run.sh has built $G.

    python results/openvino-runtime/static_shapes_check.py /tmp/qtool-openvino-runtime ship/fp32-212-194-189-96-81-51-answer
"""

import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov
from tokenizers import Tokenizer

G, graph, width = Path(sys.argv[1]), sys.argv[2], 192
tok = Tokenizer.from_file(str(G / graph / "tokenizer.json"))
tok.no_padding()
tok.no_truncation()
dev = json.load(open(Path(__file__).resolve().parents[3] / "shared/squad/dev-v1.1.json"))
paragraph = dev["data"][0]["paragraphs"][0]
encoded = tok.encode(paragraph["qas"][0]["question"], paragraph["context"])
n = len(encoded.ids)
window = {"input_ids": np.array([encoded.ids]), "attention_mask": np.ones((1, n), np.int64),
          "token_type_ids": np.array([encoded.type_ids])}
padded = {k: np.pad(v, ((0, 0), (0, width - n))) for k, v in window.items()}
core, config = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
model = core.read_model(str(G / graph / "model.onnx"))
static = model.clone()
static.reshape({p.get_any_name(): ov.PartialShape([1, width]) for p in static.inputs})
dynamic_out = list(core.compile_model(model, "CPU", config).create_infer_request().infer(padded).values())
static_out = list(core.compile_model(static, "CPU", config).create_infer_request().infer(padded).values())
unpadded_out = list(core.compile_model(model, "CPU", config).create_infer_request().infer(window).values())
print(f"window of {n} tokens padded to {width}")
print("same kept positions, static vs dynamic:", [bool(np.array_equal(a, b)) for a, b in zip(dynamic_out[2:], static_out[2:])])
print("max |start logit| difference, static vs dynamic (same padded input):", float(np.abs(dynamic_out[0] - static_out[0]).max()))
print("max |start logit| difference, dynamic padded vs unpadded (real tokens):",
      float(np.abs(dynamic_out[0][:, :n] - unpadded_out[0]).max()))
