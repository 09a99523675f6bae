"""The GPU procedure's pieces that run without a GPU: the plan and what comes back."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _plan_module():
    spec = importlib.util.spec_from_file_location("gpu_plan", REPO / "tools" / "gpu_plan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_keeps_1500_epochs_when_they_fit_and_shortens_the_schedule_when_not():
    plan = _plan_module().plan
    fast = {"images_per_s": 5000.0, "train_images": 663, "cuda_graph": True}
    assert plan(fast, 0, 30) == (1500, 0.0, 1, 1)                  # no deadline: the paper's run
    epochs, minutes, graph, bench = plan(fast, 720, 50)
    assert epochs == 1500 and graph == 1 and 0 < minutes <= (720 - 50) / 60
    # the window of the 2026-11-26 run: 644 images/s measured, 51 s spent, deadline 720 s
    measured = {"images_per_s": 643.87, "train_images": 663, "cuda_graph": True}
    assert plan(measured, 720, 51) == (522, 9.65, 1, 1)
    assert plan({"images_per_s": None}, 720, 51) is None


def test_collect_returns_at_most_eight_files_and_only_the_final_weights(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "final").mkdir(parents=True)
    (run / "train").mkdir()
    out.mkdir()
    (run / "job.log").write_text("log\n")
    (run / "check.json").write_text("{}")
    (run / "train" / "history.json").write_text("[]")
    for name, n in (("sgem_unet_fp16.pt", 2), ("sgem_unet_fp32.pt", 3), ("latest_fp16.pt", 2)):
        for i in range(n):
            (run / "final" / f"{name}.part{i:02d}").write_bytes(b"x")
        (run / "final" / f"{name}.parts.json").write_text("{}")
    (run / "DONE").touch()
    env = {**os.environ, "OUT": str(out)}
    subprocess.run(["bash", "tools/gpu_run.sh", "collect", str(run), "5"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and not any(f.startswith("latest") for f in files), files
    assert "job.log" in files and "results.tar.gz" in files and sum(".part" in f for f in files) == 5
    listing = subprocess.run(["tar", "-tzf", str(out / "results.tar.gz")], capture_output=True, text=True).stdout
    assert "final/sgem_unet_fp32.pt.parts.json" in listing and "train/history.json" in listing


@pytest.mark.parametrize("args", [["bogus"], []])
def test_gpu_run_explains_bad_commands(args):
    r = subprocess.run(["bash", "tools/gpu_run.sh", *args], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and ("usage" in r.stderr or "unknown command" in r.stderr)
