#!/usr/bin/env bash
# Search workers on one PostgreSQL study (1, 2, 3 processes) and training under torchrun (1, 2 processes):
# throughput on this machine, three interleaved repeats. Needs the `distributed` extra and PostgreSQL's binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=${M:-../shared/models/minilm-squad-lat-doc-match}
python benchmarks/scale_out.py --model "$M" --trials 8 --repeats 3 --train-steps 10 \
  --out results/scale-out/report.json 2>&1 | tee results/scale-out/output.txt
