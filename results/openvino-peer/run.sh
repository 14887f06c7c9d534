#!/usr/bin/env bash
# The OpenVINO + NNCF peer (c) beside the standard recipe (b) and qtool's graphs, on both runtimes.
# Model: ../shared/models/minilm-squad-lat-doc-match. Run from the checkout, with the openvino extra installed.
set -euo pipefail
M=../shared/models/minilm-squad-lat-doc-match
G=${G:-/tmp/qtool-openvino-peer}
OUT=${OUT:-results/openvino-peer}  # another CPU: OUT=results/openvino-peer-<cpu>
STEPS=${STEPS:-"score time"}  # score, time or both
if [ ! -d "$G/cmp" ]; then
  qtool export --model $M --variant match --config 212,194,189,96,81,51 --out $G/ship
  qtool export --model $M --config full --out $G/ship
  qtool quantize $G/ship --no-tune
  qtool standard --model $M --out $G/std            # (b) and (c), from the same checkpoint
  mkdir -p $G/cmp
  for d in $G/ship/int8-*; do ln -sfn "$d" $G/cmp/; done
  ln -sfn $G/std/std-int8-o2-dynamic $G/std/std-int8-openvino-nncf $G/cmp/
fi
common="--torch-configs none --engine openvino"
# Scoring runs: F1 on many questions (their timing columns are one short round, not a measurement).
if [[ $STEPS == *score* ]]; then
qtool verify $G/cmp --limit 1000 --neighbours 2 --protocol unpadded $common --rounds 1 --batch-sizes 1 --workload 40 \
  --report-dir $OUT/score-documents
qtool verify $G/cmp --limit 2000 --protocol unpadded --protocol padded $common --rounds 1 --batch-sizes 1 --workload 40 \
  --report-dir $OUT/score-paragraphs
fi
# Timing runs: three repeats, each every graph side by side in interleaved rounds.
[[ $STEPS == *time* ]] && for r in 1 2 3; do
  qtool verify $G/cmp --limit 60 --neighbours 2 --protocol unpadded $common --rounds 3 --batch-sizes 1 --workload 80 \
    --report-dir $OUT/time-documents-$r
  qtool verify $G/cmp --limit 120 --protocol unpadded $common --rounds 3 --batch-sizes 1,32 --workload 120 \
    --report-dir $OUT/time-paragraphs-$r
done
# This study's table, from these reports (the README's table now comes from results/answer-ranking/run.sh)
python benchmarks/results_table.py $OUT > $OUT/table.md
