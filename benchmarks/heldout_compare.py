"""F1 of INT8 graphs on held-out SQuAD train documents, side by side: overall, per overlap third, and each graph's
paired difference from a reference graph on the same questions (95 % bootstrap interval). For choosing between
recipes or configurations without looking at dev; `--dev` reports on dev questions spread over all of dev (its first
thousand questions, which verify's `--limit` takes, come from two articles).

    python benchmarks/heldout_compare.py G/int8-212-194-189-96-81-51-match G/int8-...-sq0.5 \\
        --reference G/std-int8-openvino-nncf --model ../shared/models/minilm-squad-lat-doc-match --train 600

Each graph runs on the runtime its manifest names ((c) and NNCF graphs on OpenVINO, the rest on onnxruntime).
Questions: spread over the search pool (never calibration, tuning or dev questions), less the ones the model's last
training stage saw; as documents (two neighbouring paragraphs each side; `--paragraphs`: their own paragraph), every
window alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from toolchain.core.machine import machine_info
from toolchain.data import squad
from toolchain.data.overlap import THIRDS, f1_by_third, overlap_thirds
from toolchain.data.splits import search_examples, spread_dev, trained_questions
from toolchain.graph.runtime import artifact_session, question_f1
from toolchain.search.scoring import paired_interval


def row_names(graphs: list[Path]) -> list[str]:
    """Each graph's row: its folder's name, or parent/name where two graphs share a name (one configuration's graph
    for onnxruntime and for OpenVINO, each in a root of its own)."""
    names = [g.name for g in graphs]
    return [f"{g.parent.name}/{g.name}" if names.count(g.name) > 1 else g.name for g in graphs]


def compare(graphs: list[Path], reference: Path, *, questions: int, model: str | None, offset: int = 0,
            threads: int = 2, dev: bool = False, exact: bool = False, paragraphs: bool = False) -> dict:
    exclude = trained_questions(model) if model and not dev else frozenset()
    neighbours = 0 if paragraphs else squad.DOCUMENT_NEIGHBOURS
    examples = spread_dev(questions, neighbours) if dev else search_examples(questions, offset=offset,
                                                                             neighbours=neighbours, exclude=exclude)
    tokenizer = AutoTokenizer.from_pretrained(graphs[0], local_files_only=True)
    features = squad.featurize(examples, tokenizer, max_length=squad.MAX_LENGTH, doc_stride=squad.DOC_STRIDE)
    third = overlap_thirds(examples)[0]
    ref = question_f1(artifact_session(reference, threads), examples, features)
    rows = {reference.name: {"f1": 100 * float(ref.mean()), **f1_by_third(ref, third)}}
    for folder, name in zip(graphs, row_names(graphs)):
        f1 = question_f1(artifact_session(folder, threads, exact=exact or None), examples, features)
        rows[name] = {"f1": 100 * float(f1.mean()), **f1_by_third(f1, third),
                      "vs_reference": {"all": paired_interval(f1, ref), **{
                          t: paired_interval(f1[third == i], ref[third == i]) for i, t in enumerate(THIRDS)}}}
        print(f"{name:<46} F1 {rows[name]['f1']:6.2f}  " + " / ".join(f"{rows[name][t]:5.1f}" for t in THIRDS)
              + "  vs reference {:+.2f} [{:+.2f}, {:+.2f}]".format(*rows[name]["vs_reference"]["all"]), flush=True)
    return {"machine": machine_info(threads), "split": "dev, spread" if dev else "held-out train",
            "workload": "paragraphs" if paragraphs else "documents", "questions": len(examples),
            "windows": len(features), "offset": offset,
            "left_out_trained": len(exclude), "reference": reference.name, "rows": rows,
            "float_precision": "fp32 for every graph" if exact else "as each manifest states"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graphs", type=Path, nargs="+")
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--model", help="the model the graphs come from: its last stage's training questions are left out")
    parser.add_argument("--train", type=int, default=600, help="questions (held-out train, or dev with --dev)")
    parser.add_argument("--dev", action="store_true", help="report: dev questions spread over all of dev instead")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--paragraphs", action="store_true", help="the questions' own paragraphs instead of documents")
    parser.add_argument("--exact", action="store_true",
                        help="compute the graphs' FP32 parts in FP32 even where a manifest takes the runtime's default "
                             "(the reference runs as its manifest says)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = compare(args.graphs, args.reference, questions=args.train, model=args.model, offset=args.offset,
                     dev=args.dev, exact=args.exact, paragraphs=args.paragraphs)
    print(f"reference {report['reference']}: F1 {report['rows'][report['reference']]['f1']:.2f} "
          f"({report['questions']} questions, {report['windows']} windows)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
