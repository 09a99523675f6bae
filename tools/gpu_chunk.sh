#!/usr/bin/env bash
# One chunk of the paper-scale run (docs/gpu.md), for a machine with a per-command time
# limit. Trains from params.yaml's train section until one more epoch would overrun
# MINUTES, keeps the full checkpoint in RUN_DIR (resume by running this again), and, if
# $OUT is set, copies compact fp16 weights, the history and the summary there.
#
#   tools/gpu_chunk.sh DATA_ROOT RUN_DIR MINUTES [more `sgem train` options...]
#
# Uses the python on PATH; run from the repository root (PYTHONPATH is set to it, so an
# installed sgem is not needed where torch, numpy, scipy, pillow, pyyaml and tqdm exist).
set -euo pipefail
data=${1:?dataset root}
run=${2:?run directory}
minutes=${3:?minutes for this chunk}
shift 3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m sgem train --params params.yaml --params-key train --data "$data" --out "$run" \
    --precision bf16 --channels-last --no-progress --stop-after-minutes "$minutes" "$@"
if [ -n "${OUT:-}" ]; then
    python -m sgem export --checkpoint "$run/checkpoint.pt" --out "$OUT/sgem_unet_fp16.pt"
    cp "$run/history.json" "$run/train_summary.json" "$OUT/"
fi
