#!/usr/bin/env bash
# Does a LengthDrop stage trained under `answer` on the shipped configuration close the documents gap to (c)?
# Trains one stage from ../shared/models/minilm-squad-lat-doc-match (the same questions, recipe and seed as the
# `match` stage that made it; only the variant and the sandwich configuration change), exports and quantizes it, and
# scores it against (c) of both models on held-out train documents and on dev documents spread over all of dev.
# Run from the checkout, with the openvino extra installed. 40 minutes of training on 2 cores, then about 30 of scoring.
set -euo pipefail
M=../shared/models/minilm-squad-lat-doc-match
S=${S:-runs/doc-answer}               # the trained stage
G=${G:-/tmp/qtool-answer-training}    # graphs
OUT=${OUT:-results/answer-training}
CFG=212,194,189,96,81,51
[ -f "$S/model.safetensors" ] || qtool train --base $M --out $S --limit 12000 --neighbours 2 --max-length 384 \
  --length-drop --length-rule cap --variant answer --teacher frozen --sandwich-config $CFG --lr 1e-4 --batch-size 16 \
  --time-budget 40 --seed 11
if [ ! -d "$G/cmp" ]; then
  for m in ref:$M stage:$S; do
    name=${m%%:*}; model=${m#*:}
    qtool export --model $model --variant answer --config $CFG --config 315,251,242,159,142,33 --out $G/$name
    qtool export --model $model --config full --out $G/$name
    qtool quantize $G/$name --no-tune
    qtool standard --model $model --out $G/$name-std       # (b) and (c) of each model
  done
  mkdir -p $G/cmp
  for name in ref stage; do
    for d in $G/$name/int8-*; do ln -sfn "$d" "$G/cmp/$name-$(basename "$d")"; done
    ln -sfn $G/$name-std/std-int8-openvino-nncf "$G/cmp/$name-c"
  done
fi
graphs=$(ls -d $G/cmp/*-int8-* $G/cmp/stage-c)
python benchmarks/heldout_compare.py $graphs --reference $G/cmp/ref-c --model $S --train 600 \
  --out $OUT/heldout-train-int8.json | tee $OUT/heldout-train-int8.txt
python benchmarks/heldout_compare.py $graphs --reference $G/cmp/ref-c --train 600 --dev \
  --out $OUT/dev-spread-int8.json | tee $OUT/dev-spread-int8.txt
