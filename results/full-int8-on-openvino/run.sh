#!/usr/bin/env bash
# qtool's full static INT8 graph on OpenVINO: INC's QDQ form (recipe static-fp32-out-qdq) against the QOperator form
# qtool ships (which OpenVINO cannot convert), both on onnxruntime, beside (b) and (c). Run from the checkout, with
# the openvino extra installed. Model: ../shared/models/minilm-squad-lat-doc-match.
set -euo pipefail
M=../shared/models/minilm-squad-lat-doc-match
G=${G:-/tmp/qtool-full-int8-openvino}
OUT=${OUT:-results/full-int8-on-openvino}
if [ ! -d "$G/cmp" ]; then
  qtool export --model $M --config full --out $G/qop
  cp -r $G/qop/fp32-full $G/qdq-src && mkdir -p $G/qdq && mv $G/qdq-src $G/qdq/fp32-full
  qtool quantize $G/qop/fp32-full --no-tune                                # static-fp32-out: QOperator, QAttention
  qtool quantize $G/qdq/fp32-full --no-tune --recipe static-fp32-out-qdq   # the same recipe in QDQ form
  qtool standard --model $M --out $G/std
  mkdir -p $G/cmp
  ln -sfn $G/qop/int8-full $G/cmp/int8-full
  ln -sfn $G/qdq/int8-full $G/cmp/int8-full-qdq
  ln -sfn $G/std/std-int8-o2-dynamic $G/std/std-int8-openvino-nncf $G/cmp/
fi
common="--engine openvino --neighbours 2 --protocol unpadded --torch-configs none --batch-sizes 1"
for r in 1 2 3; do
  qtool verify $G/cmp $common --limit 60 --rounds 3 --workload 80 --report-dir $OUT/time-documents-$r
done
qtool verify $G/cmp $common --limit 300 --rounds 1 --workload 40 --report-dir $OUT/score-documents
