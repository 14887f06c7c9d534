#!/usr/bin/env bash
# What ships (315,... under `answer`, INC static INT8 on onnxruntime; NNCF's static INT8 of the same Drop-and-Restore
# graph on OpenVINO beside it), 212,... under `answer` and under `match` (the graphs that shipped before), qtool's full
# static INT8 graph, and the peers (b) and (c): scored and timed side by side. Run from the checkout, with the
# openvino extra installed. Model: ../shared/models/minilm-squad-lat-doc-match.
set -euo pipefail
M=../shared/models/minilm-squad-lat-doc-match
G=${G:-/tmp/qtool-answer-ranking}
OUT=${OUT:-results/answer-ranking}  # another CPU: OUT=results/answer-ranking-<cpu> (the README table is rewritten only from the default)
STEPS=${STEPS:-"score time"}  # score, time or both
if [ ! -d "$G/cmp" ]; then
  qtool export --model $M --variant answer --config 212,194,189,96,81,51 --config 315,251,242,159,142,33 --out $G/ship
  qtool export --model $M --variant match --config 212,194,189,96,81,51 --out $G/ship
  qtool export --model $M --config full --out $G/ship
  qtool quantize $G/ship --no-tune
  python benchmarks/nncf_drop_restore.py $G/ship/fp32-315-251-242-159-142-33-answer $G/ship/nncf-315-251-242-159-142-33-answer
  qtool standard --model $M --out $G/std            # (b) and (c), from the same checkpoint
  mkdir -p $G/cmp
  for d in $G/ship/int8-* $G/ship/nncf-*; do ln -sfn "$d" $G/cmp/; done
  ln -sfn $G/std/std-int8-o2-dynamic $G/std/std-int8-openvino-nncf $G/cmp/
fi
common="--torch-configs none"
# Timing runs: three repeats, each every graph side by side in interleaved rounds.
[[ $STEPS == *time* ]] && for r in 1 2 3; do
  qtool verify $G/cmp --limit 60 --neighbours 2 --protocol unpadded $common --rounds 3 --batch-sizes 1 --workload 80 \
    --report-dir $OUT/time-documents-$r
  qtool verify $G/cmp --limit 120 --protocol unpadded $common --rounds 3 --batch-sizes 1,32 --workload 120 \
    --report-dir $OUT/time-paragraphs-$r
done
# Scoring runs: F1 on many questions (their timing columns are one short round, not a measurement).
if [[ $STEPS == *score* ]]; then
qtool verify $G/cmp --limit 1000 --neighbours 2 --protocol unpadded $common --rounds 1 --batch-sizes 1 --workload 40 \
  --report-dir $OUT/score-documents
qtool verify $G/cmp --limit 2000 --protocol unpadded --protocol padded $common --rounds 1 --batch-sizes 1 --workload 40 \
  --report-dir $OUT/score-paragraphs
# Dev questions spread over all of dev (the first thousand come from five articles), against (c)
python benchmarks/heldout_compare.py $G/cmp/int8-315-251-242-159-142-33-answer $G/cmp/int8-212-194-189-96-81-51-answer \
  $G/cmp/int8-212-194-189-96-81-51-match $G/cmp/int8-full --reference $G/cmp/std-int8-openvino-nncf --model $M \
  --train 600 --dev --out $OUT/dev-spread-int8.json
fi
# The README's results table, from these reports
if [ "$OUT" = results/answer-ranking ]; then python benchmarks/results_table.py $OUT --readme README.md
else python benchmarks/results_table.py $OUT > $OUT/table.md; fi
