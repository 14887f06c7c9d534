"""Export 212,194,189,96,81,51 (match) of the shared model, as is (seed 0) and with small weight noise (seeds 1..),
and validate on the first N dev questions. Run from the checkout: python results/ranking-ties/repro.py 200 0 1 2 3"""
import sys, time, torch, numpy as np
from pathlib import Path
from toolchain.data import squad
from toolchain.model.drop_and_restore import load_qa_model
from toolchain.core.length import LengthConfig
from toolchain.graph.export import export_graph, validate_graph
from toolchain.core.errors import *
model, tok = load_qa_model("../shared/models/minilm-squad-lat-doc-match")
samples = int(sys.argv[1]); seeds = [int(s) for s in sys.argv[2:]]
ex = squad.load_squad("dev", limit=samples)
feats = squad.featurize(ex, tok, max_length=384, doc_stride=128)
print("windows", len(feats))
cfg = LengthConfig.parse("212,194,189,96,81,51", 6, 384, "cap", "match")
base = {k: v.clone() for k, v in model.state_dict().items()}
for seed in seeds:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if p.dtype.is_floating_point and seed:
                p.copy_(base[k] + torch.randn(p.shape, generator=g) * 1e-3 * base[k].std())
    t = time.time()
    path = export_graph(model, cfg, f"/tmp/ranking-ties-{seed}.onnx")
    try:
        r = validate_graph(path, model, cfg, feats)
        print(seed, "OK", r["max_abs_diff"], r["kept_agreement"], time.time() - t)
    except Exception as e:
        print(seed, "FAIL", str(e)[-200:], time.time() - t)
