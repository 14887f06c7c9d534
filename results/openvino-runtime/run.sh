#!/usr/bin/env bash
# qtool's reduced graphs on OpenVINO Runtime: INC's static INT8 in the form OpenVINO fuses (`--recipe
# static-openvino`), at OpenVINO's default precision, against the same graphs on onnxruntime and the peers. Run from
# the checkout, with the openvino extra installed. Model: ../shared/models/minilm-squad-lat-doc-match. About 100
# minutes on 2 cores; STEPS picks steps (STEPS="heldout dev" scores without timing).
set -euo pipefail
M=../shared/models/minilm-squad-lat-doc-match
G=${G:-/tmp/qtool-openvino-runtime}
OUT=${OUT:-results/openvino-runtime}
CONFIGS="212,194,189,96,81,51 315,240,200,140,100,40 315,251,242,159,142,33"
STEPS=${STEPS:-"heldout exact time dev"}
n() { echo "${1//,/-}-answer"; }
if [ ! -d "$G/ship" ]; then  # the onnxruntime graphs and the peers, as every earlier study made them
  qtool export --model $M --variant answer $(for c in $CONFIGS; do echo "--config $c"; done) --out $G/ship
  qtool export --model $M --config full --out $G/ship
  qtool quantize $G/ship --no-tune             # INC static INT8 + the onnxruntime graph passes (what shipped)
  qtool standard --model $M --out $G/std       # (b) and (c)
fi
# 1. The OpenVINO forms of the same FP32 graphs: INC's static INT8 for OpenVINO on the shipped calibration set (ov/),
#    and on 300 windows half of them documents of SQuAD train, as (c) calibrates (ovdoc/); NNCF's, for comparison.
mkdir -p $G/ov $G/ovdoc $G/nncf $G/cmp
for c in $CONFIGS; do [ -d $G/ov/fp32-$(n $c) ] || cp -r $G/ship/fp32-$(n $c) $G/ov/; done
for c in 212,194,189,96,81,51 315,240,200,140,100,40; do
  [ -d $G/ovdoc/fp32-$(n $c) ] || cp -r $G/ship/fp32-$(n $c) $G/ovdoc/
  [ -d $G/nncf/nncf-$(n $c) ] || python benchmarks/nncf_drop_restore.py $G/ship/fp32-$(n $c) $G/nncf/nncf-$(n $c)
done
qtool quantize $G/ov --no-tune --recipe static-openvino
qtool quantize $G/ovdoc --no-tune --recipe static-openvino --samples 300 --calib-neighbours 2 \
  --calib ../shared/squad/train-v1.1.json
# 2. F1 on 600 held-out train documents against (c) (the `match` stage's training questions left out); the OpenVINO
#    forms again with their FP32 parts in FP32 (--exact), for what OpenVINO's default precision costs.
ORT=$(for c in $CONFIGS; do echo $G/ship/int8-$(n $c); done)
OV=$(for c in $CONFIGS; do echo $G/ov/int8-$(n $c); done)
OTHER="$G/ovdoc/int8-$(n 212,194,189,96,81,51) $G/ovdoc/int8-$(n 315,240,200,140,100,40) \
  $G/nncf/nncf-$(n 212,194,189,96,81,51) $G/nncf/nncf-$(n 315,240,200,140,100,40)"
C=$G/std/std-int8-openvino-nncf
[[ $STEPS == *heldout* ]] && python benchmarks/heldout_compare.py $ORT $OV $OTHER --reference $C --model $M --train 600 \
  --out $OUT/heldout-train.json | tee $OUT/heldout-train.txt
[[ $STEPS == *exact* ]] && python benchmarks/heldout_compare.py $OV --reference $C --model $M --train 600 --exact \
  --out $OUT/heldout-train-exact.json | tee $OUT/heldout-train-exact.txt
# 3. Timing: three repeats of every graph side by side in interleaved rounds, documents then paragraphs.
for c in $CONFIGS; do ln -sfn $G/ship/int8-$(n $c) $G/cmp/int8-$(n $c); ln -sfn $G/ov/int8-$(n $c) $G/cmp/openvino-int8-$(n $c); done
ln -sfn $G/ship/int8-full $G/cmp/int8-full
ln -sfn $G/std/std-int8-o2-dynamic $G/cmp/std-int8-o2-dynamic
ln -sfn $C $G/cmp/std-int8-openvino-nncf
[[ $STEPS == *time* ]] && for r in 1 2 3; do
  qtool verify $G/cmp --limit 60 --neighbours 2 --protocol unpadded --torch-configs none --rounds 3 --batch-sizes 1 \
    --workload 80 --report-dir $OUT/time-documents-$r
  qtool verify $G/cmp --limit 120 --protocol unpadded --torch-configs none --rounds 3 --batch-sizes 1,32 --workload 120 \
    --report-dir $OUT/time-paragraphs-$r
done
# 4. Reported, not chosen on: 600 dev documents spread over all of dev, against (c).
if [[ $STEPS == *dev* ]]; then
  python benchmarks/heldout_compare.py $ORT $OV $OTHER --reference $C --model $M --train 600 --dev \
    --out $OUT/dev-spread.json | tee $OUT/dev-spread.txt
fi
