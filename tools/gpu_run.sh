#!/usr/bin/env bash
# The paper-scale run on a remote GPU machine whose commands have a time limit and whose
# files come back only through an output folder (docs/gpu.md). Run from the repository
# root, with the machine's own python (torch, numpy, scipy, pillow, pyyaml, tqdm); sgem
# is used from this checkout, not installed.
#
#   tools/gpu_run.sh start   DATA RUN [DEADLINE_S [RETURN_S]]
#       smoke check and throughput probe (tools/gpu_check.py), then the whole job as one
#       detached process (setsid): train, export, speed bench. DEADLINE_S (default:
#       none) is when, in seconds from now, the job must have finished everything: the
#       number of epochs is then the paper's 1500 if they fit at the measured speed, else
#       as many as fit (a complete cosine schedule over fewer epochs, recorded as such).
#       The command returns after RETURN_S seconds (default 540), leaving copies of the
#       log and of the latest weights in $OUT.
#   tools/gpu_run.sh collect RUN [WAIT_S]
#       wait (at most WAIT_S seconds, default 540) for the job to finish, then copy the
#       results to $OUT: job.log, results.tar.gz (check, history, summary, bench, part
#       manifests) and the weights in parts of at most 15 MiB (`sgem join` rebuilds them).
#   tools/gpu_run.sh collect-checkpoint RUN [FIRST [COUNT]]
#       after a chunk (CHUNK=1) that left the run unfinished: copy COUNT (default 4) parts of
#       its full checkpoint from part FIRST (default 0), and their manifest, to $OUT; parts of
#       15 MiB, 4 per command, so that each command's files stay under 64 MiB.
#   tools/gpu_run.sh job ...   (internal: what `start` runs detached)
#
# Environment: MODEL (default sgem_unet; `unet` for the ablation), EPOCHS (a fixed number
# of epochs instead of the plan's, e.g. to match an earlier run's schedule exactly; the
# trainer then gets no hard stop), SEED (default: params.yaml's), BENCH=0 (skip the speed bench),
# COMPILE=1 (torch.compile the forward under the graph capture: 744 against 644 images/s for
# sgem_unet on an H200, ~30 s of compilation; docs/gpu.md), CHUNK=1 (this window trains one
# chunk of a run longer than the window: EPOCHS, default 1500, stay the schedule, the
# trainer stops before DEADLINE_S, which is then required, and an unfinished run's full
# checkpoint is split into parts for `collect-checkpoint`), RESUME=MANIFEST (the parts
# manifest of the checkpoint an earlier chunk left: joined and verified into RUN/train
# before anything else, so that the run continues from it).
#
# Without $OUT (a GPU box of your own) the results stay in RUN/final.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # cpu only to dry-run this script
BENCH_MODES=${BENCH_MODES:-fp32 fp32+cl bf16 bf16+cl fp32+graph bf16+cl+graph}
export MODEL=${MODEL:-sgem_unet}

say() { echo "[gpu_run $(date +%H:%M:%S)] $*"; }

copy_out() {  # copy what exists to $OUT (never fails the command)
    local run=$1
    [ -n "${OUT:-}" ] || return 0
    cp -f "$run/job.log" "$OUT/" 2>/dev/null
    local files=()
    for f in check.json check.log train/history.json train/train_summary.json train/checkpoint.pt.parts.json \
             final/bench_cuda.json \
             final/bench_cuda.md final/${MODEL}_fp16.pt.parts.json final/${MODEL}_fp32.pt.parts.json \
             final/nvidia-smi.txt final/plan.json; do
        [ -f "$run/$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] && tar -czf "$OUT/results.tar.gz" -C "$run" "${files[@]}"
    # the final weights only (at most 5 parts): with job.log and results.tar.gz, 7 files,
    # under a limit of 8 files per command (the insurance copy is `start`'s alone)
    for p in "$run"/final/"$MODEL"_*.part??; do [ -f "$p" ] && cp -f "$p" "$OUT/"; done
    return 0
}

cmd=${1:?usage: tools/gpu_run.sh start DATA RUN [DEADLINE_S [RETURN_S]] | collect RUN [WAIT_S] | collect-checkpoint RUN [FIRST [COUNT]]}
shift
case "$cmd" in
start)
    data=${1:?dataset root}; run=${2:?run directory}; deadline=${3:-0}; ret=${4:-540}
    t0=$(date +%s)
    mkdir -p "$run/final"
    rm -f "$run/DONE"   # a finished chunk's mark, where the same machine starts the next one
    if [ "${CHUNK:-0}" = 1 ] && [ "$deadline" -le 0 ]; then
        say "CHUNK=1 needs DEADLINE_S (when this window's share must be done)"; exit 2
    fi
    if [ -n "${RESUME:-}" ]; then   # first, so that missing or damaged parts stop the command at once
        mkdir -p "$run/train"
        $PY -m sgem join "$RESUME" --out "$run/train/checkpoint.pt" || { say "RESUME: no verified checkpoint: stopping"; exit 1; }
    fi
    nvidia-smi > "$run/final/nvidia-smi.txt" 2>&1
    say "smoke check and throughput probe"
    $PY -u tools/gpu_check.py "$data" "$run/check.json" --model "$MODEL" --device "$DEVICE" --probe-steps "${PROBE_STEPS:-40}" 2>&1 | tee "$run/check.log"
    [ -f "$run/check.json" ] || { say "check wrote nothing: stopping"; copy_out "$run"; exit 1; }
    chunk=(); [ "${CHUNK:-0}" = 1 ] && chunk=(--chunk "${EPOCHS:-1500}")
    plan=$($PY tools/gpu_plan.py "$run/check.json" "$deadline" "$(( $(date +%s) - t0 ))" "${chunk[@]}")
    read -r epochs minutes graph bench <<< "$plan"
    if [ "$epochs" = FAIL ]; then say "the check measured no usable step, or the window holds no chunk: stopping"; copy_out "$run"; exit 1; fi
    if [ -n "${EPOCHS:-}" ] && [ "${CHUNK:-0}" != 1 ]; then epochs=$EPOCHS; minutes=0; fi
    [ "${BENCH:-1}" = 0 ] && bench=0
    echo "{\"epochs\": $epochs, \"stop_after_minutes\": $minutes, \"cuda_graph\": $graph, \"bench\": $bench," \
         "\"deadline_s\": $deadline, \"model\": \"$MODEL\", \"seed\": ${SEED:-null}, \"epochs_fixed\": ${EPOCHS:-null}," \
         "\"compile\": $([ "${COMPILE:-0}" = 1 ] && echo true || echo false)," \
         "\"chunk\": $([ "${CHUNK:-0}" = 1 ] && echo true || echo false), \"resume\": \"${RESUME:-}\"}" > "$run/final/plan.json"
    say "plan: $(cat "$run/final/plan.json")"
    setsid nohup bash tools/gpu_run.sh job "$data" "$run" "$epochs" "$minutes" "$graph" "$bench" \
        > "$run/job.log" 2>&1 < /dev/null &
    say "job started (pid $!); log: $run/job.log"
    while [ $(( $(date +%s) - t0 )) -lt "$ret" ] && [ ! -f "$run/DONE" ]; do sleep 5; done
    tail -n 3 "$run/job.log"
    if [ ! -f "$run/DONE" ] && [ -f "$run/train/checkpoint.pt" ] && [ -n "${OUT:-}" ]; then
        say "insurance: fp16 weights of the latest checkpoint"
        $PY -m sgem export --checkpoint "$run/train/checkpoint.pt" --out "$run/final/latest_fp16.pt" --part-mb 15 \
            > /dev/null && cp -f "$run"/final/latest_fp16.pt.part?? "$run/final/latest_fp16.pt.parts.json" "$OUT/"
    fi
    copy_out "$run"
    ;;
collect)
    run=${1:?run directory}; wait_s=${2:-540}
    t0=$(date +%s)
    while [ ! -f "$run/DONE" ] && [ $(( $(date +%s) - t0 )) -lt "$wait_s" ]; do
        copy_out "$run"; sleep 10
    done
    [ -f "$run/DONE" ] && say "job finished" || say "job still running after ${wait_s}s"
    tail -n 25 "$run/job.log"
    copy_out "$run"
    ;;
collect-checkpoint)
    run=${1:?run directory}; first=${2:-0}; count=${3:-4}
    manifest="$run/train/checkpoint.pt.parts.json"
    [ -f "$run/DONE" ] || { say "the job has not finished: collect first"; exit 1; }
    [ -f "$manifest" ] || { say "no $manifest: the run is complete, or this was not a chunk"; exit 1; }
    [ -n "${OUT:-}" ] || { say "no \$OUT: the parts are in $run/train"; exit 0; }
    cp -f "$manifest" "$OUT/"
    n=0
    for i in $(seq "$first" $(( first + count - 1 ))); do
        p=$(printf '%s/train/checkpoint.pt.part%02d' "$run" "$i")
        [ -f "$p" ] && cp -f "$p" "$OUT/" && n=$(( n + 1 ))
    done
    total=$(ls "$run"/train/checkpoint.pt.part?? | wc -l)
    say "copied $n of the checkpoint's $total parts (from part $first) and the manifest"
    ;;
job)
    data=$1; run=$2; epochs=$3; minutes=$4; graph=$5; bench=$6
    stop=(); [ "$minutes" != 0 ] && stop=(--stop-after-minutes "$minutes")
    gflag=--no-cuda-graph; [ "$graph" = 1 ] && gflag=--cuda-graph
    cflag=--no-compile; [ "${COMPILE:-0}" = 1 ] && cflag=--compile
    say "train: $epochs epochs, $gflag $cflag ${stop[*]}"
    $PY -m sgem train --params params.yaml --params-key train --data "$data" --out "$run/train" \
        --model "$MODEL" ${SEED:+--seed "$SEED"} --epochs "$epochs" $gflag $cflag --no-progress --no-dvclive --device "$DEVICE" "${stop[@]}"
    say "train exited with $?"
    if [ "${CHUNK:-0}" = 1 ] && ! $PY -c "import json, sys; sys.exit(not json.load(open(sys.argv[1]))['complete'])" \
            "$run/train/train_summary.json"; then
        say "chunk done, the run continues in a later window: its checkpoint in parts (collect-checkpoint)"
        rm -f "$run"/train/checkpoint.pt.part?? "$run/train/checkpoint.pt.parts.json"
        $PY -m sgem split "$run/train/checkpoint.pt" --part-mb 15
        say "job done"
        touch "$run/DONE"
        exit 0
    fi
    for prec in fp16 fp32; do
        extra=(); [ $prec = fp32 ] && extra=(--fp32)
        $PY -m sgem export --checkpoint "$run/train/checkpoint.pt" --out "$run/final/${MODEL}_$prec.pt" \
            --part-mb 15 "${extra[@]}"
    done
    if [ "$bench" = 1 ]; then
        say "speed bench (batch 1)"
        # shellcheck disable=SC2086
        $PY -m sgem bench --models sgem_unet dnanet acm --device "$DEVICE" --batch 1 --mode $BENCH_MODES \
            --warmup 10 --warmup-s 2 --runs 2000 --budget-s 3 --out-dir "$run/final" --name bench_cuda
    fi
    say "job done"
    touch "$run/DONE"
    ;;
*)
    echo "unknown command $cmd (start | collect | collect-checkpoint | job)" >&2; exit 2 ;;
esac
