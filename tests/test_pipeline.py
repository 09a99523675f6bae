"""The DVC pipeline: notebooks run by papermill as stages, in a temporary clone."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NOTEBOOKS = ["data", "train", "evaluate", "figures"]
FIGURES = ["data/overview.png", "train/training_curves.png", "eval/pd_fa_roc.png", "eval/qualitative.png",
           "figures/fps_vs_iou.png", "figures/architecture.png", "figures/sgem_maps.png"]

TINY = {
    "data": {"source": "synthetic", "root": None, "synthetic": {"n": 12, "size": 64, "seed": 0}, "overview_images": 4},
    "train": {"model": "sgem_unet", "model_kwargs": {"widths": [4, 8, 16, 32, 64], "sgem_dim": 16}, "epochs": 2,
              "batch_size": 4, "crop_size": 32, "lr": 0.001, "device": "cpu", "deterministic": True,
              "checkpoint_every": 1, "on_config_change": "restart", "progress": False},
    "evaluate": {"split": "test", "threshold": 0.5, "device": "cpu", "qualitative_images": 2},
    "bench": {"device": "cpu", "batches": [1], "precisions": None, "size": 32, "channels": 1, "runs": 1,
              "warmup": 0, "budget_s": None},
    "figures": {"dataset_name": "synthetic (tiny)", "sgem_map_images": 1},
    "ablation": {"models": [], "seeds": []},
}


def _env():
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}


def _run(args, cwd, **kw):
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _clone(tmp_path: Path) -> Path:
    """A clean clone of the working tree (tracked and untracked-not-ignored files)."""
    dst = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        _run(args, dst)
    return dst


def _check_reports(reports: Path, figures=FIGURES):
    metrics = json.loads((reports / "metrics.json").read_text())
    assert {"iou", "niou", "f1", "pd", "fa", "fa_legacy", "epoch", "selection"} <= set(metrics)
    details = json.loads((reports / "eval" / "details.json").read_text())
    assert {"provenance", "environment", "counts"} <= set(details)
    table = (reports / "figures" / "table1.md").read_text()
    assert "DNANet" in table and "(this run)" in table and "| measured |" in table
    assert "| dnanet | measured | NUDT-SIRST | paper |" in table  # untrained baselines carry the paper's IoU
    assert (reports / "bench.json").is_file() and (reports / "bench.md").is_file()
    assert "(this run)" in (reports / "figures" / "table1.csv").read_text()
    for fig in figures:
        assert (reports / fig).stat().st_size > 5000, fig
    for nb in NOTEBOOKS:
        assert (reports / "notebooks" / f"{nb}.ipynb").is_file()


def test_tiny_pipeline_in_a_clean_clone(tmp_path):
    """The demo pipeline (on tiny params) leaves `git status` empty, DVC's reading
    commands print no warnings, and a second repro runs nothing."""
    clone = _clone(tmp_path)
    (clone / "params.demo.yaml").write_text(yaml.safe_dump(TINY))
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny demo"], clone)
    _run([BIN / "dvc", "repro", "figures@demo"], clone, timeout=900)
    _check_reports(clone / "reports" / "demo")
    assert _run(["git", "status", "--porcelain"], clone).strip() == ""
    shown = _run([BIN / "dvc", "metrics", "show"], clone)
    assert "reports/metrics/demo.json" in shown and "iou" in shown
    plots = _run([BIN / "dvc", "plots", "show", "-o", str(tmp_path / "plots")], clone)
    for out in (shown, plots, _run([BIN / "dvc", "status"], clone)):
        assert "WARNING" not in out and "failed" not in out.lower(), out
    again = _run([BIN / "dvc", "repro", "figures@demo"], clone)
    assert "didn't change" in again and "Running stage" not in again
    assert _run(["git", "status", "--porcelain"], clone).strip() == ""
    # the other profiles are declared with their own params but were not run
    assert not (clone / "reports" / "paper").exists()


@pytest.mark.slow
def test_each_notebook_runs_alone_with_papermill(tmp_path):
    # the figures notebook reads the bench stage's output: make it as that stage would
    _run([sys.executable, "-m", "sgem", "bench", "--size", "32", "--batch", "1", "--runs", "1", "--warmup", "0",
          "--out-dir", "reports/alone", "--name", "bench"], tmp_path)
    for nb in NOTEBOOKS:
        _run([sys.executable, "-m", "papermill", "--no-progress-bar", str(REPO / "notebooks" / f"{nb}.ipynb"),
              str(tmp_path / f"{nb}.out.ipynb"), "-p", "profile", "alone", "-p", "reports_dir", "reports/alone",
              "-p", "runs_dir", "runs/alone"], tmp_path, timeout=900)
    # the tiny defaults of the parameter cells: a complete run, figures included
    assert (tmp_path / "reports" / "alone" / "figures" / "table1.md").is_file()
    assert (tmp_path / "reports" / "alone" / "eval" / "qualitative.png").is_file()


@pytest.mark.slow
def test_demo_pipeline_with_its_real_params(tmp_path):
    clone = _clone(tmp_path)
    _run([BIN / "dvc", "repro", "figures@demo"], clone, timeout=1800)
    _check_reports(clone / "reports" / "demo")
    assert "didn't change" in _run([BIN / "dvc", "repro", "figures@demo"], clone)


def test_notebooks_are_committed_without_outputs():
    for nb in NOTEBOOKS:
        book = json.loads((REPO / "notebooks" / f"{nb}.ipynb").read_text())
        code = [c for c in book["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), nb
        assert any("parameters" in c["metadata"].get("tags", []) for c in code), nb
        ids = [c.get("id") for c in book["cells"]]   # nbformat 4.5: papermill warns about a cell without one
        assert all(ids) and len(set(ids)) == len(ids), (nb, ids)


def test_params_files_hold_the_paper_protocol_the_cpu_protocol_and_the_demo():
    paper = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (paper["train"]["epochs"], paper["train"]["batch_size"], paper["train"]["lr"],
            paper["train"]["crop_size"]) == (1500, 8, 1e-4, 256)
    demo = yaml.safe_load((REPO / "params.demo.yaml").read_text())
    cpu = yaml.safe_load((REPO / "params.cpu.yaml").read_text())
    assert demo["data"]["source"] == "synthetic" and set(demo) == set(paper) == set(cpu) - {"deploy"}
    assert cpu["data"]["root"] == paper["data"]["root"] and cpu["evaluate"]["split"] == "test"
    assert cpu["train"]["eval_every"] == 0   # the test split is scored once, at the last epoch
    assert cpu["ablation"]["models"] == ["unet"] and demo["ablation"]["models"] == []
    from sgem.train import TrainConfig
    for p in (paper, demo, cpu):  # every train key is a real setting
        TrainConfig.from_dict({**p["train"], "data_root": "x"}).validate()


def test_cpu_profile_stages_run_on_tiny_data(tmp_path):
    """The cpu profile's stages (its protocol's options scaled down) run end to end."""
    from sgem.synthetic import make_synthetic

    clone = _clone(tmp_path)
    make_synthetic(clone / "data" / "NUDT-SIRST", n=12, size=64, seed=1)   # a stand-in at the profile's data location
    cpu = yaml.safe_load((clone / "params.cpu.yaml").read_text())
    tiny = {**TINY, "data": {**cpu["data"], "overview_images": 4},
            "train": {**cpu["train"], **TINY["train"], "epochs": 3, "warmup_epochs": 1, "final_epochs": 1,
                      "final_crop_size": 64, "ema_decay": 0.9, "on_config_change": "error",
                      # clipping, if the profile clips, for the first 2 of the 3 epochs (as S: the high-lr part)
                      **({"grad_clip_epochs": 2} if cpu["train"].get("grad_clip_epochs") else {})},
            "deploy": {**cpu["deploy"], "calibration": 4, "batches": "1", "warmup_s": 0.1, "budget_s": 0.3,
                       "compile_flag": "", "openvino_flag": ""},
            "ablation": cpu["ablation"]}
    (clone / "params.cpu.yaml").write_text(yaml.safe_dump(tiny))
    _run([BIN / "dvc", "repro", "figures@cpu"], clone, timeout=900)
    _check_reports(clone / "reports" / "cpu")
    if importlib.util.find_spec("onnxruntime"):   # the deploy stage: the [deploy] extra
        _run([BIN / "dvc", "repro", "deploy@cpu"], clone, timeout=900)
        table = json.loads((clone / "reports" / "cpu" / "deploy" / "bench_deploy.json").read_text())
        assert {r["path"] for r in table["rows"]} >= {"torch fp32 (eager, the reference)", "onnxruntime fp32",
                                                      "onnxruntime int8 (static, QDQ)"}
        assert all("iou" in r for r in table["rows"])
    summary = json.loads((clone / "reports" / "cpu" / "train" / "summary.json").read_text())
    assert summary["resolved"]["precision"] in ("bf16", "fp32") and summary["complete"]
    history = json.loads((clone / "reports" / "cpu" / "train" / "history.json").read_text())
    assert [r["train/crop"] for r in history] == [32, 32, 64]
    if cpu["train"].get("grad_clip"):   # the profile's clipping reaches the trainer, and ends where it says
        assert [r.get("train/grad_clip", 0.0) for r in history] == [cpu["train"]["grad_clip"]] * 2 + [0.0]
    # the ablation: unet under the same protocol and seed, beside sgem_unet, in the ablation table and Table 1
    abl = json.loads((clone / "reports" / "cpu" / "train" / "ablation.json").read_text())
    seeds = cpu["ablation"]["seeds"] or [tiny["train"]["seed"]]   # the profile's seeds ([]: train's own)
    assert abl["order"] == ["sgem_unet", "unet"] and abl["models"]["unet"]["seeds"] == seeds
    assert abl["models"]["sgem_unet"]["seeds"] == seeds
    assert abl["models"]["sgem_unet"]["runs"][0]["run"] == "runs/cpu"
    assert abl["models"]["unet"]["runs"][0]["epochs"] == 3
    table = (clone / "reports" / "cpu" / "figures" / "table1.md").read_text()
    label = f"| unet (this run's ablation, {len(seeds)} seed(s))"
    unet_row = next(line for line in table.splitlines() if line.startswith(label))
    assert f"{100 * abl['models']['unet']['mean']['iou']:.2f}" in unet_row


def test_runs_comparison_draws_each_run_and_its_last_test_metrics(tmp_path):
    from sgem import plots

    def hist(loss0, iou):
        rows = [{"epoch": e, "train/loss": loss0 / e} for e in range(1, 6)]
        rows[-1].update({"test/iou": iou, "test/niou": iou, "test/f1": iou, "test/pd": 0.99})
        return rows

    fig = plots.runs_comparison({"a": hist(1.0, 0.9), "b": hist(0.8, 0.7), "c": hist(0.5, 0.5)}, "t")
    loss_ax, bar_ax = fig.axes
    assert [ln.get_label() for ln in loss_ax.get_lines()] == ["a", "b", "c"]
    heights = sorted(round(p.get_height(), 6) for p in bar_ax.patches)
    assert len(heights) == 12 and heights[0] == 50.0 and heights[-1] == 99.0
    plots.save(fig, tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_stages_run_notebooks_with_an_encrypted_kernel_connection(tmp_path):
    """papermill starts its kernel over local TCP in plain text, and ipykernel warns about it
    at every stage; the stages use the `sgem` engine (sgem/_papermill.py), which has
    jupyter_client provision CurveZMQ keys, so the kernel starts encrypted and silent."""
    pytest.importorskip("papermill")
    from sgem._papermill import _can_encrypt

    if not _can_encrypt():
        pytest.skip("pyzmq without CurveZMQ, or a jupyter_client without transport_encryption")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = [s["do"]["cmd"] for s in stages.values() if "papermill" in str(s.get("do", {}).get("cmd", ""))]
    assert commands and all("papermill --engine sgem " in c for c in commands)
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
          "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": "print(6 * 7)"}]}
    (tmp_path / "in.ipynb").write_text(json.dumps(nb))
    out = _run([sys.executable, "-m", "papermill", "--engine", "sgem", "--no-progress-bar", "-k", "python3",
                "in.ipynb", "out.ipynb"], tmp_path, timeout=300)
    assert "without encryption" not in out and "WARNING" not in out, out[-2000:]
    assert json.loads((tmp_path / "out.ipynb").read_text())["cells"][0]["outputs"][0]["text"] in ("42\n", ["42\n"])


def test_provenance_names_the_commit_and_the_tracked_files_edited_since(tmp_path, monkeypatch):
    """A report made from uncommitted edits says so: its commit alone would claim the committed files."""
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    from sgem.report import provenance

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "params.yaml").write_text("epochs: 1\n")
    git("add", "params.yaml")
    git("commit", "-qm", "one")
    monkeypatch.chdir(tmp_path)
    clean = provenance("train@x", {})
    assert clean["git_commit"] and clean["git_modified"] == []
    (tmp_path / "params.yaml").write_text("epochs: 2\n")
    (tmp_path / "untracked.txt").write_text("not part of the run\n")
    assert provenance("train@x", {})["git_modified"] == ["params.yaml"]
