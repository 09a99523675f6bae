"""The rule written for the next candidate protocol (README.md, "What this changes for the next
candidate"), applied to the fit checks of its two official-split `sgem_unet` runs:

    PYTHONPATH=. python reports/cpu_pilots/two_seed_gate.py P [Q ...]

A candidate passes only if the fit checks of both seeds' final EMA weights
(`fit_check/<candidate>_official_sgem_unet_s0.json` and `_s1.json`: every third official
training image) find no image over 100 false-alarm pixels **and** their mean pooled IoU is above
the mean of protocol B's two runs (`fit_check/B_official_sgem_unet_s0.json`, `_s1.json`), read
from those files rather than written here. Of several passing candidates the one with the higher
mean fit IoU is adopted. Reads training-image figures only; no test row.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1)
LIMIT = 100        # false-alarm pixels on one training image


def fit(protocol: str, seed: int) -> dict:
    path = HERE / "fit_check" / f"{protocol}_official_sgem_unet_s{seed}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path.relative_to(HERE)}: no fit check of {protocol}'s seed {seed} yet")
    d = json.loads(path.read_text())
    if d["every"] != 3 or d["split"] != "train":
        raise ValueError(f"{path.relative_to(HERE)}: expected a fit check of every third training image, "
                         f"got every {d['every']} of {d['split']}")
    return d["weights"]["model"]


def bar() -> float:
    return sum(fit("B", s)["iou"] for s in SEEDS) / len(SEEDS)


def judge(protocol: str, bar_iou: float) -> dict:
    fits = [fit(protocol, s) for s in SEEDS]
    mean = sum(f["iou"] for f in fits) / len(fits)
    over = [f["images_over_100_false_alarm_pixels"] for f in fits]
    worst = [f["worst"][0] for f in fits]
    return {"protocol": protocol, "fit_iou": [f["iou"] for f in fits], "mean": mean, "over": over,
            "worst": worst, "passes": all(n == 0 for n in over) and mean > bar_iou}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        b = bar()
        rows = [judge(p, b) for p in argv]
    except (FileNotFoundError, ValueError) as e:
        print(f"two_seed_gate: {e}", file=sys.stderr)
        return 1
    print(f"bar: mean fit IoU of B's two sgem_unet runs {100 * b:.2f}")
    for r in rows:
        seeds = ", ".join(f"seed {s}: {100 * i:.2f} ({n} over {LIMIT}; worst {w[0]} {w[1]})"
                          for s, i, n, w in zip(SEEDS, r["fit_iou"], r["over"], r["worst"]))
        print(f"{r['protocol']}: {seeds}; mean {100 * r['mean']:.2f} -> {'passes' if r['passes'] else 'fails'}")
    passing = sorted((r for r in rows if r["passes"]), key=lambda r: -r["mean"])
    print(f"adopted: {passing[0]['protocol'] if passing else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
