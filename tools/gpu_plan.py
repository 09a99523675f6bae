"""How many epochs a GPU window can hold (tools/gpu_run.sh, docs/gpu.md).

    python3 tools/gpu_plan.py CHECK_JSON DEADLINE_S SPENT_S  ->  "EPOCHS MINUTES CUDA_GRAPH BENCH"
    python3 tools/gpu_plan.py CHECK_JSON DEADLINE_S SPENT_S --chunk EPOCHS   (one window of a longer run)

``DEADLINE_S`` (0: none) is when, in seconds from the start of the command, everything
must be done; ``SPENT_S`` what the check already used. The paper's 1500 epochs are kept
when they fit at the measured speed; otherwise the epochs that fit, as a complete
schedule over fewer epochs (never a 1500-epoch schedule cut short). The speed bench
(``BENCH_S``) runs after training when it fits beside 1500 epochs, and always when the
run is shortened anyway. ``MINUTES`` is the trainer's hard stop (0: none).

``--chunk EPOCHS``: the window holds one chunk of a run of EPOCHS epochs that continues in
later windows from its checkpoint (docs/gpu.md): the schedule stays EPOCHS long, the
trainer stops in time for the checkpoint to be split into parts before the deadline, and
no speed bench runs.
"""

from __future__ import annotations

import json
import math
import sys

PAPER_EPOCHS = 1500
BENCH_S = 55.0       # sgem bench of three models in six modes at batch 1
FIXED_S = 35.0       # launching the job, the final evaluation, exports and packing
EFFICIENCY = 0.93    # share of an epoch spent in training steps (evaluation, checkpoints: the rest)
SPLIT_S = 15.0       # a chunk's end: the checkpoint (~99 MiB) saved and split into parts


def _epoch_s(check: dict) -> float | None:
    """Seconds per epoch at the check's measured speed, or None when it measured no step."""
    ips = check.get("images_per_s")
    return check.get("train_images", 663) / ips / EFFICIENCY if ips else None


def plan(check: dict, deadline_s: float, spent_s: float) -> tuple[int, float, int, int] | None:
    epoch_s = _epoch_s(check)
    if epoch_s is None:
        return None
    graph = int(bool(check.get("cuda_graph")))
    if deadline_s <= 0:
        return PAPER_EPOCHS, 0.0, graph, 1
    left = deadline_s - spent_s - FIXED_S
    if math.floor(left / epoch_s) >= PAPER_EPOCHS:
        return PAPER_EPOCHS, round(left / 60, 2), graph, int(left - PAPER_EPOCHS * epoch_s >= BENCH_S)
    fit = max(1, math.floor((left - BENCH_S) / epoch_s))
    return fit, round(max(left - BENCH_S, epoch_s) / 60, 2), graph, 1


def plan_chunk(check: dict, deadline_s: float, spent_s: float, epochs: int) -> tuple[int, float, int, int] | None:
    """One window's share of a run of ``epochs`` epochs: (epochs, minutes, graph, 0), or None
    when the check measured no step or the window cannot hold two epochs."""
    epoch_s = _epoch_s(check)
    if epoch_s is None or deadline_s <= 0:
        return None
    left = deadline_s - spent_s - FIXED_S - SPLIT_S
    if left < 2 * epoch_s:
        return None
    return epochs, round(left / 60, 2), int(bool(check.get("cuda_graph"))), 0


if __name__ == "__main__":
    check_json, deadline, spent = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
    if sys.argv[4:5] == ["--chunk"]:
        result = plan_chunk(check_json, deadline, spent, int(sys.argv[5]))
    else:
        result = plan(check_json, deadline, spent)
    print("FAIL - - -" if result is None else " ".join(map(str, result)))
