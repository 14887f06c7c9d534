"""Prototype: milder `match` priors, FP32 PyTorch, held-out train documents, paired against full."""
import sys, json, time
import numpy as np, torch
from dataclasses import replace
from toolchain.model import drop_and_restore as dr
from toolchain.model.drop_and_restore import load_qa_model
from toolchain.core.length import LengthConfig
from toolchain.data import squad
from toolchain.data.splits import search_examples, trained_questions
from toolchain.data.overlap import overlap_thirds, f1_by_third, THIRDS
from toolchain.graph.runtime import predict_torch, Protocol
from toolchain.search.scoring import paired_interval
torch.set_num_threads(2)
MODEL = "/work/shared/models/minilm-squad-lat-doc-match"
N = int(sys.argv[1]); OFFSET = int(sys.argv[2]) if len(sys.argv) > 2 else 0
model, tok = load_qa_model(MODEL)
examples = search_examples(N, offset=OFFSET, neighbours=squad.DOCUMENT_NEIGHBOURS, exclude=trained_questions(MODEL))
features = squad.featurize(examples, tok, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)
third = overlap_thirds(examples)[0]
from toolchain.model.families import family_of
QA = family_of(model).qa_head(model)
orig_drop = dr._drop
STATE = {"mode": "match", "layer": 0}

def patched(h, a, probs, mask, positions, n_in, k, variant, question_len=None, near=None, scores_out=None):
    mode, layer = STATE["mode"], STATE["layer"]; STATE["layer"] += 1
    if mode.startswith("qa"):
        qa = QA(a).float()  # [B, n, 2]
        lik = qa.max(dim=-1).values.to(dr.RANK_DTYPE)
        att = dr.significance(probs, mask, variant, positions).to(dr.RANK_DTYPE)
        score = torch.where(mask > 0, lik, torch.full_like(lik, -1e6) - positions.to(lik.dtype))
        at = torch.gather(near, 1, positions)
        if mode == "qanear":
            score = torch.where(at, score + dr.MATCH_FIRST, score)
        elif mode == "qarest":  # near tier by attention first, the rest by the QA head
            score = torch.where(at, att + dr.MATCH_FIRST, score)
        elif mode.startswith("qaafter"):  # match in the first layers, the QA head's ranking after
            if layer < int(mode[7:]):
                score = torch.where(at, att + dr.MATCH_FIRST, att)
        score = torch.where(positions < question_len, dr.QUESTION_FIRST - positions.to(score.dtype), score)
        order = dr._ranked(score)
        top, rest = order[:, :k], order[:, k:]
        aside = (dr.take_rows(a, rest), torch.gather(positions, 1, rest))
        return dr.take_rows(a, top), torch.gather(mask, 1, top), torch.gather(positions, 1, top), aside
    if near is None or mode == "match":
        return orig_drop(h, a, probs, mask, positions, n_in, k, variant, question_len, near, scores_out)
    if mode.startswith("first"):
        return orig_drop(h, a, probs, mask, positions, n_in, k, variant, question_len,
                         near if layer < int(mode[5:]) else None, scores_out)
    score = dr.significance(probs, mask, variant, positions).to(dr.RANK_DTYPE)
    at = torch.gather(near, 1, positions)
    if mode.startswith("soft"):  # near tokens' attention times a factor
        score = torch.where(at, score * float(mode[4:]), score)
    elif mode.startswith("cap"):  # near first, but only the best cap% of the context slots
        qn = question_len
        slots = (float(mode[3:]) / 100 * (k - qn)).clamp(min=0)  # [B,1]
        near_score = torch.where(at, score, torch.full_like(score, -1e9))
        rank = torch.argsort(torch.argsort(near_score, dim=1, descending=True, stable=True), dim=1, stable=True)
        score = torch.where(at & (rank < slots), score + dr.MATCH_FIRST, score)
    score = torch.where(positions < question_len, dr.QUESTION_FIRST - positions.to(score.dtype), score)
    order = dr._ranked(score)
    top, rest = order[:, :k], order[:, k:]
    aside = (dr.take_rows(a, rest), torch.gather(positions, 1, rest))
    return dr.take_rows(a, top), torch.gather(mask, 1, top), torch.gather(positions, 1, top), aside
dr._drop = patched
orig_dar = dr.drop_and_restore
def dar(*args, **kw):
    STATE["layer"] = 0
    return orig_dar(*args, **kw)
import toolchain.graph.runtime as rt
dr.drop_and_restore = dar

def score(config):
    preds = predict_torch(model, features, config, batch_size=1, protocol=Protocol.UNPADDED)
    ans = squad.postprocess(examples, features, preds.start_logits, preds.end_logits)
    return squad.question_scores(ans, examples)[1]
full = score(LengthConfig.parse("full", 6, 384))
out = {"full": {"f1": 100 * full.mean(), **f1_by_third(full, third)}}
print(f"questions {len(examples)} windows {len(features)}")
print(f"full {out['full']['f1']:.2f} " + " / ".join(f"{out['full'][t]:.1f}" for t in THIRDS), flush=True)
for cfg in sys.argv[3].split(";"):
    for mode in sys.argv[4].split(","):
        STATE["mode"] = mode
        t = time.time()
        f1 = score(LengthConfig.parse(cfg, 6, 384, variant="match"))
        r = {"f1": 100 * f1.mean(), **f1_by_third(f1, third), "vs_full": paired_interval(f1, full),
             **{f"vs_full_{t_}": paired_interval(f1[third == i], full[third == i]) for i, t_ in enumerate(THIRDS)}}
        out[f"{cfg} {mode}"] = r
        print(f"{cfg:<26} {mode:<8} {r['f1']:.2f} " + " / ".join(f"{r[t_]:.1f}" for t_ in THIRDS)
              + "  vs full {:+.2f} [{:+.2f},{:+.2f}]".format(*r["vs_full"])
              + "  low {:+.2f}".format(r["vs_full_low"][0]) + f"  {time.time()-t:.0f}s", flush=True)
json.dump(out, open(f"/work/s43/proto-{N}-{OFFSET}.json", "w"), default=float, indent=1)
