"""Where reduced match configurations lose F1 on held-out train documents: window choice or within the window;
whether the answer's tokens survive; and what a confidence cascade to the full graph would recover."""
import sys, json
import numpy as np, torch
from toolchain.model.drop_and_restore import load_qa_model
from toolchain.core.length import LengthConfig
from toolchain.data import squad
from toolchain.data.splits import search_examples, trained_questions
from toolchain.data.overlap import overlap_thirds, f1_by_third, THIRDS
from toolchain.graph.runtime import predict_torch, Protocol
from toolchain.search.scoring import paired_interval
torch.set_num_threads(2)
MODEL = "/work/shared/models/minilm-squad-lat-doc-match"
N = int(sys.argv[1]); OFFSET = int(sys.argv[2])
model, tok = load_qa_model(MODEL)
ex = search_examples(N, offset=OFFSET, neighbours=squad.DOCUMENT_NEIGHBOURS, exclude=trained_questions(MODEL))
ft = squad.featurize(ex, tok, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)
third = overlap_thirds(ex)[0]
# answer windows and the answer's token positions in each
ans_tok = np.full(len(ft), -1)
for r in range(len(ft)):
    e = ex[ft.example_index[r]]; s = e.answer_starts[0]; t = s + len(e.answers[0])
    off = ft.offsets[r]
    inside = np.where((off[:, 0] >= 0) & (off[:, 0] <= s) & (off[:, 1] > s))[0]
    last = off[:, 1].max()
    if len(inside) and last >= t:
        ans_tok[r] = inside[0]
def f1_of(s, e):
    return squad.question_scores(squad.postprocess(ex, ft, s, e), ex)[1]
def conf(s, e):
    """per question: the best window's max start + max end logit over context tokens"""
    ctx = ft.offsets[:, :, 0] >= 0
    m = np.where(ctx, s, -1e9).max(1) + np.where(ctx, e, -1e9).max(1)
    out = np.full(len(ex), -1e9)
    np.maximum.at(out, ft.example_index, m)
    return out
res = {}
full = predict_torch(model, ft, None, batch_size=1, protocol=Protocol.UNPADDED)
oracle_mask = ans_tok >= 0
def oracle(p):  # only windows holding the answer may answer (a question with none keeps all)
    has = np.zeros(len(ex), bool); has[ft.example_index[oracle_mask]] = True
    keep = oracle_mask | ~has[ft.example_index]
    s = np.where(keep[:, None], p.start_logits, -1e4); e = np.where(keep[:, None], p.end_logits, -1e4)
    return f1_of(s, e)
F_full, O_full = f1_of(full.start_logits, full.end_logits), oracle(full)
print(f"questions {len(ex)} windows {len(ft)} answer windows {oracle_mask.sum()}")
print(f"full: F1 {100*F_full.mean():.2f}  answer-window only {100*O_full.mean():.2f}")
for cfg in sys.argv[3].split(";"):
    c = LengthConfig.parse(cfg, 6, 384, variant="match")
    p = predict_torch(model, ft, c, batch_size=1, protocol=Protocol.UNPADDED, scores=True)
    F, O = f1_of(p.start_logits, p.end_logits), oracle(p)
    print(f"{cfg}: F1 {100*F.mean():.2f} ({100*(F-F_full).mean():+.2f})  answer-window only {100*O.mean():.2f} "
          f"({100*(O-O_full).mean():+.2f})  full, answer-window only vs full {100*(O_full-F_full).mean():+.2f}")
    for i, t in enumerate(THIRDS):
        sel = third == i
        print(f"   {t:<6} F1 {100*(F-F_full)[sel].mean():+.2f}  answer-window only {100*(O-O_full)[sel].mean():+.2f}")
    rows = np.where(oracle_mask)[0]
    enters = [np.mean(~np.isnan(p.scores[i][rows, ans_tok[rows]])) for i in range(len(p.scores))]
    print("   answer start token enters layer i (answer windows): " + " ".join(f"{x:.2f}" for x in enters))
    for i, t in enumerate(THIRDS):
        rr = rows[third[ft.example_index[rows]] == i]
        print(f"     {t:<6} " + " ".join(f"{np.mean(~np.isnan(p.scores[j][rr, ans_tok[rr]])):.2f}" for j in range(len(p.scores))))
    lost = np.zeros(len(ex), bool)
    np.logical_or.at(lost, ft.example_index[rows], np.isnan(p.scores[-1][rows, ans_tok[rows]]) | ~np.isin(0, [0]))
    lost_end = np.zeros(len(ex), bool)
    gone = np.array([ans_tok[r] not in p.kept[-1][r] for r in rows])
    np.logical_or.at(lost_end, ft.example_index[rows], gone)
    has = np.zeros(len(ex), bool); has[ft.example_index[rows]] = True
    for name, sel in (("answer dropped in some answer window", lost_end), ("answer kept to the end", has & ~lost_end)):
        print(f"   {name}: {sel.sum()} questions, F1 vs full {100*(F-F_full)[sel].mean():+.2f} "
              f"(share of the total loss {100*(F-F_full)[sel].sum()/(F-F_full).sum():.0f}%)")
    cr = conf(p.start_logits, p.end_logits)
    for frac in (0.1, 0.2, 0.3, 0.5):
        cut = np.quantile(cr, frac); to_full = cr <= cut
        mix = np.where(to_full, F_full, F)
        print(f"   cascade: lowest {int(100*frac)}% confidence to full -> F1 {100*mix.mean():.2f} "
              f"({100*(mix-F_full).mean():+.2f}); low third {100*(mix-F_full)[third==0].mean():+.2f}")
    res[cfg] = {"f1": F.tolist(), "oracle": O.tolist(), "conf": cr.tolist()}
res["full"] = {"f1": F_full.tolist(), "oracle": O_full.tolist(), "conf": conf(full.start_logits, full.end_logits).tolist()}
res["third"] = third.tolist()
json.dump(res, open(f"/work/s43/diag-{N}-{OFFSET}.json", "w"))
