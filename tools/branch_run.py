"""Start a new run from another run's checkpoint, with a setting changed that acts only
after that checkpoint's epoch, so the new run is a complete run of the changed protocol.

    PYTHONPATH=. python tools/branch_run.py CHECKPOINT OUT_DIR KEY=VALUE [KEY=VALUE ...]

Writes ``OUT_DIR/checkpoint.pt``: the checkpoint with ``out_dir`` and the given settings
changed in its stored config (and nothing else), so that ``sgem train --out OUT_DIR`` with
the changed settings resumes it instead of refusing it as a run of other settings. Then:

    sgem train ...the run's own command... --out OUT_DIR --no-bn-recalibrate  (and/or --final-epochs N)

Only settings that act late in a run are accepted (``BRANCHABLE``: ``bn_recalibrate``, after
the last epoch; ``final_epochs``, from the first of the last full-size epochs), and only from a
checkpoint taken before they act: a run branched from epoch E is then identical, epoch for
epoch, to the changed protocol run from scratch (on a machine where these runs are
deterministic), and costs only the epochs after E. Any other setting would make the branch a
run of no single protocol, so it is refused.

Why: pilots J, K, P and Q (``reports/cpu_pilots/README.md``) were run this way from an earlier
run's checkpoint (``bn_recalibrate``, ``final_epochs`` changed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from sgem.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

# setting -> the first epoch at which a run with the setting changed from `old` to `new` can
# differ from the run without the change (epochs + 1: only after the last epoch)
BRANCHABLE = {
    # BatchNorm statistics recomputed once, after the last epoch
    "bn_recalibrate": lambda cfg, old, new: cfg["epochs"] + 1,
    # the last `final_epochs` epochs train on crops of `final_crop_size`
    "final_epochs": lambda cfg, old, new: cfg["epochs"] - max(old, new) + 1,
}


def parse_settings(items: list[str], config: dict) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        if key not in BRANCHABLE:
            raise ValueError(f"{key}: not a setting that acts only after the checkpoint's epoch; "
                             f"expected one of {sorted(BRANCHABLE)}")
        value = yaml.safe_load(text)
        if type(value) is not type(config[key]):
            raise ValueError(f"{key}={text}: expected a {type(config[key]).__name__} like the run's "
                             f"{config[key]!r}")
        if key == "final_epochs" and not 0 <= value <= config["epochs"]:
            raise ValueError(f"final_epochs={text}: expected 0 to the run's {config['epochs']} epochs")
        out[key] = value
    if not out:
        raise ValueError("no setting to change: give at least one KEY=VALUE")
    return out


def branch(checkpoint: str, out_dir: str, items: list[str]) -> tuple[Path, int]:
    """Write ``out_dir/checkpoint.pt``; returns its path and the epoch it holds."""
    target = Path(out_dir) / CHECKPOINT_NAME
    if target.exists():
        raise ValueError(f"{target}: exists already; branch into a new folder")
    state = load_checkpoint(checkpoint)
    config = state["config"]
    changes = parse_settings(items, config)
    for key, value in changes.items():
        # a checkpoint of the last epoch is past every change (and may hold its end-of-run steps)
        first = min(BRANCHABLE[key](config, config[key], value), config["epochs"])
        if state["epoch"] >= first:
            raise ValueError(f"{checkpoint}: holds epoch {state['epoch']}, but {key}={value} acts from "
                             f"epoch {first} of {config['epochs']} on; branch from an earlier checkpoint")
    config.update(changes, out_dir=str(out_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(target, state)
    return target, state["epoch"]


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        target, epoch = branch(argv[0], argv[1], argv[2:])
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"branch_run: {e}", file=sys.stderr)
        return 1
    print(f"{target}: epoch {epoch}, settings changed: {' '.join(argv[2:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
