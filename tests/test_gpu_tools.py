"""The GPU procedure's pieces that run without a GPU: the plan and what comes back."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str):
    """A script of tools/ as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_keeps_1500_epochs_when_they_fit_and_shortens_the_schedule_when_not():
    plan = _tool("gpu_plan").plan
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


def test_collect_returns_the_named_models_weights(tmp_path):
    """MODEL=unet (the ablation): its parts and manifests come back, not sgem_unet's names."""
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "final").mkdir(parents=True)
    out.mkdir()
    (run / "job.log").write_text("log\n")
    for name, n in (("unet_fp16.pt", 2), ("unet_fp32.pt", 3)):
        for i in range(n):
            (run / "final" / f"{name}.part{i:02d}").write_bytes(b"x")
        (run / "final" / f"{name}.parts.json").write_text("{}")
    (run / "DONE").touch()
    env = {**os.environ, "OUT": str(out), "MODEL": "unet"}
    subprocess.run(["bash", "tools/gpu_run.sh", "collect", str(run), "5"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    files = sorted(p.name for p in out.iterdir())
    assert sum(f.startswith("unet_fp") for f in files) == 5, files
    listing = subprocess.run(["tar", "-tzf", str(out / "results.tar.gz")], capture_output=True, text=True).stdout
    assert "final/unet_fp32.pt.parts.json" in listing and "final/unet_fp16.pt.parts.json" in listing


@pytest.mark.parametrize("kernel, group", [
    # kernel names as torch 2.11 + cuDNN 9.19 showed them on an H200 (reports/nudt_gpu_522ep/profile_step.json)
    ("void at::native::(anonymous namespace)::upsample_bilinear2d_nhwc_out_frame<float, float>(float)", "upsampling"),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<at::native::Var>", "normalisation"),
    ("sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x64x64", "conv backward (weights)"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv backward (data)"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution / matmul"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "element-wise"),
])
def test_profile_groups_kernels_by_what_they_do(kernel, group):
    assert _tool("gpu_profile")._group(kernel) == group


@pytest.mark.slow   # ~10-30 s of model steps on a CPU; the default run stays under its 10-minute budget
def test_profile_compile_experiment_records_each_setting_and_a_failure_without_stopping(tmp_path):
    """`tools/gpu_profile.py --compile`: a setting that fails (here an unknown compile mode) is
    recorded with its error, the others keep their figures, and the JSON is written."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "sgem", "make-synthetic", str(data), "--n", "16", "--size", "64"], cwd=REPO,
                   check=True, capture_output=True)
    out = tmp_path / "probe.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-u", "tools/gpu_profile.py", str(data), str(out), "--device", "cpu",
                        "--models", "unet", "--batch", "1", "--probe-steps", "2", "--compile", "no-such-mode",
                        "--no-profile"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(out.read_text())
    tp = result["models"]["unet"]["throughput"]
    assert result["compile"] == ["no-such-mode"]
    assert tp["bf16+cl eager"]["images_per_s"] > 0 and tp["bf16+cl eager"]["step_mode"] == "eager"
    assert "no-such-mode" in tp["bf16+cl compile[no-such-mode] eager"]["error"]
    assert "gpu_us_per_step" not in result["models"]["unet"]      # --no-profile: throughput only


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_on_a_cpu(tmp_path):
    """The check's dry run on a CPU: every stage, the trainer's stop/resume on its tiny split included."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "sgem", "make-synthetic", str(data), "--n", "64", "--size", "64"], cwd=REPO,
                   check=True, capture_output=True)
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-u", "tools/gpu_check.py", str(data), str(out), "--device", "cpu", "--model", "unet",
                        "--batch", "2", "--probe-steps", "7"], cwd=REPO, env=env, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert r.returncode == 0 and result["ok"], result.get("problems")
    assert result["trainer"]["complete"] and result["trainer"]["second_call"] == 2


def test_job_trains_the_named_model_and_seed_and_exports_it_in_parts(tmp_path):
    """The detached job (what `start` launches), dry-run on a CPU: MODEL, SEED and the epochs
    reach the trainer, and the weights come out in parts under the model's name."""
    data, run = tmp_path / "data", tmp_path / "run"
    subprocess.run([sys.executable, "-m", "sgem", "make-synthetic", str(data), "--n", "16", "--size", "64"],
                   cwd=REPO, check=True, capture_output=True)
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "MODEL": "unet", "SEED": "3"}
    r = subprocess.run(["bash", "tools/gpu_run.sh", "job", str(data), str(run), "1", "0", "0", "0"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and (run / "DONE").exists(), r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((run / "train" / "train_summary.json").read_text())
    assert summary["complete"] and summary["epochs"] == 1
    from sgem.checkpoint import load_checkpoint
    cfg = load_checkpoint(run / "train" / "checkpoint.pt")["config"]
    assert (cfg["model"], cfg["seed"]) == ("unet", 3)
    for prec in ("fp16", "fp32"):
        assert (run / "final" / f"unet_{prec}.pt.parts.json").exists()


@pytest.mark.parametrize("tool", ["gpu_check", "gpu_profile"])
def test_tools_find_sgem_from_their_checkout_without_pythonpath(tool, tmp_path):
    """On the GPU machine sgem is installed nowhere and the documented commands set no
    PYTHONPATH: each tool must import sgem from its own checkout, from any working directory.
    The child drops the checkout from sys.path (where an editable install put it) to be that
    machine; a dataset that does not exist then fails on the dataset, not on the import."""
    code = ("import runpy, sys; from pathlib import Path; repo = Path(sys.argv[1]).resolve(); "
            "sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != repo]; "
            "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    out = tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code, str(REPO), str(REPO / "tools" / f"{tool}.py"),
                        str(tmp_path / "no-such-data"), str(out), "--device", "cpu"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    said = r.stdout + r.stderr + (out.read_text() if out.exists() else "")
    assert r.returncode != 0
    assert "No module named" not in said, said[-2000:]
    assert "no known dataset layout" in said, said[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]


def _fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in python for gpu_run.sh's job: records each call; `-c` runs on the real one."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\n[ "$1" = -c ] && exec {sys.executable} "$@"\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    return fake, calls


@pytest.mark.parametrize("compile_env, flag", [("1", "--compile"), ("0", "--no-compile"), (None, "--no-compile")])
def test_job_passes_compile_to_the_trainer_only_when_asked(compile_env, flag, tmp_path):
    """COMPILE=1 reaches `sgem train` as --compile; otherwise the job says --no-compile, so a
    params file's setting never turns it on unnoticed. A stand-in python records the calls."""
    fake, calls = _fake_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "COMPILE"}
    env.update({"DEVICE": "cpu", "PYTHON": str(fake), "MODEL": "unet"})
    if compile_env is not None:
        env["COMPILE"] = compile_env
    (tmp_path / "run").mkdir()
    r = subprocess.run(["bash", "tools/gpu_run.sh", "job", "data", str(tmp_path / "run"), "3", "0", "1", "0"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    train = next(line for line in calls.read_text().splitlines() if line.startswith("-m sgem train"))
    assert f" {flag} " in f" {train} " and "--cuda-graph" in train.split(), train


def test_chunk_plan_keeps_the_schedule_and_stops_before_the_deadline():
    gp = _tool("gpu_plan")
    measured = {"images_per_s": 643.87, "train_images": 663, "cuda_graph": True}
    epochs, minutes, graph, bench = gp.plan_chunk(measured, 780, 45, 1500)
    assert (epochs, graph, bench) == (1500, 1, 0)               # the schedule is not shortened
    assert minutes == round((780 - 45 - gp.FIXED_S - gp.SPLIT_S) / 60, 2)
    assert gp.plan_chunk(measured, 0, 45, 1500) is None          # a chunk needs a deadline
    assert gp.plan_chunk(measured, 45 + gp.FIXED_S + gp.SPLIT_S + 1, 45, 1500) is None   # holds no epochs
    r = subprocess.run([sys.executable, "tools/gpu_plan.py", "/dev/stdin", "780", "45", "--chunk", "1500"], cwd=REPO,
                       input=json.dumps(measured), capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["1500", str(minutes), "1", "0"]


@pytest.mark.parametrize("complete", [False, True])
def test_chunk_job_splits_an_unfinished_runs_checkpoint_and_exports_a_finished_one(complete, tmp_path):
    fake, calls = _fake_python(tmp_path)
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train" / "train_summary.json").write_text(json.dumps({"complete": complete}))
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": str(fake), "CHUNK": "1"}
    r = subprocess.run(["bash", "tools/gpu_run.sh", "job", "data", str(run), "1500", "11.5", "1", "0"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (run / "DONE").exists(), r.stdout + r.stderr
    said = calls.read_text().splitlines()
    train = next(c for c in said if c.startswith("-m sgem train"))
    assert "--epochs 1500" in train and "--stop-after-minutes 11.5" in train
    splits = [c for c in said if c.startswith("-m sgem split")]
    exports = [c for c in said if c.startswith("-m sgem export")]
    if complete:
        assert not splits and len(exports) == 2
    else:
        assert splits == [f"-m sgem split {run}/train/checkpoint.pt --part-mb 15"] and not exports


def test_collect_checkpoint_returns_the_parts_in_groups_under_the_limits(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    (run / "train").mkdir(parents=True)
    out.mkdir()
    env = {**os.environ, "OUT": str(out)}
    cmd = ["bash", "tools/gpu_run.sh", "collect-checkpoint", str(run)]
    (run / "train" / "checkpoint.pt.parts.json").write_text("{}")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "collect first" in r.stdout           # the job has not finished
    (run / "DONE").touch()
    for i in range(7):
        (run / "train" / f"checkpoint.pt.part{i:02d}").write_bytes(b"x")
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    first = sorted(p.name for p in out.iterdir())
    assert first == sorted(["checkpoint.pt.parts.json"] + [f"checkpoint.pt.part{i:02d}" for i in range(4)])
    for p in out.iterdir():
        p.unlink()
    r = subprocess.run(cmd + ["4"], cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoint.pt.parts.json"] +
                                                          [f"checkpoint.pt.part{i:02d}" for i in range(4, 7)])
    assert "copied 3 of the checkpoint's 7 parts (from part 4)" in r.stdout


def test_start_with_a_missing_resume_checkpoint_stops_before_the_check(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "CHUNK": "1",
           "RESUME": str(tmp_path / "nothing.parts.json")}
    r = subprocess.run(["bash", "tools/gpu_run.sh", "start", "data", str(tmp_path / "run"), "600", "5"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "RESUME: no verified checkpoint" in r.stdout, r.stdout + r.stderr
    assert "nothing.parts.json" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "check.json").exists()
    env.pop("RESUME")
    (tmp_path / "run" / "DONE").touch()      # an earlier chunk's mark on the same machine
    r = subprocess.run(["bash", "tools/gpu_run.sh", "start", "data", str(tmp_path / "run"), "0", "5"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CHUNK=1 needs DEADLINE_S" in r.stdout
    assert not (tmp_path / "run" / "DONE").exists()     # else `start` and `collect` would not wait


@pytest.mark.slow   # three epochs of unet at 256x256 on a CPU
def test_a_run_split_over_two_windows_continues_from_the_carried_checkpoint(tmp_path):
    """Window 1 trains a chunk and leaves its checkpoint in parts; they come back in groups,
    are joined and verified at the next window's start, and the run completes from there."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "sgem", "make-synthetic", str(data), "--n", "16", "--size", "64"],
                   cwd=REPO, check=True, capture_output=True)
    base = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "MODEL": "unet", "CHUNK": "1"}
    run1, back = tmp_path / "w1", tmp_path / "back"
    back.mkdir()
    r = subprocess.run(["bash", "tools/gpu_run.sh", "job", str(data), str(run1), "3", "0.001", "0", "0"], cwd=REPO,
                       env=base, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((run1 / "train" / "train_summary.json").read_text())["epochs_done"] == 1
    for first in (0, 4):
        subprocess.run(["bash", "tools/gpu_run.sh", "collect-checkpoint", str(run1), str(first)], cwd=REPO,
                       env={**base, "OUT": str(back)}, check=True, capture_output=True)
    assert not list((run1 / "final").glob("*.pt*"))                  # no exports of an unfinished run
    run2 = tmp_path / "w2"
    (run2 / "train").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "sgem", "join", str(back / "checkpoint.pt.parts.json"), "--out",
                    str(run2 / "train" / "checkpoint.pt")], cwd=REPO, check=True, capture_output=True)
    r = subprocess.run(["bash", "tools/gpu_run.sh", "job", str(data), str(run2), "3", "0", "0", "0"], cwd=REPO,
                       env=base, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((run2 / "train" / "train_summary.json").read_text())
    history = json.loads((run2 / "train" / "history.json").read_text())
    assert summary["complete"] and [h["epoch"] for h in history] == [1, 2, 3]
    assert (run2 / "final" / "unet_fp16.pt").exists() and not list((run2 / "train").glob("checkpoint.pt.part*"))
