import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sgem.cli import main
from sgem.evaluate import evaluate_checkpoint, evaluate_pred_dir, load_prediction
from sgem.metrics import IRSTDMetrics
from sgem.data import load_split
from sgem.synthetic import make_synthetic
from sgem.train import CHECKPOINT_NAME, TrainConfig, Trainer, load_checkpoint, save_checkpoint, train

TINY_MODEL = {"widths": [4, 8, 16, 32, 64], "sgem_dim": 16}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, n=16, size=64, seed=5)
    return root


def tiny_cfg(data, out, **kw):
    base = dict(data_root=str(data), out_dir=str(out), model_kwargs=dict(TINY_MODEL), epochs=4, batch_size=4,
                crop_size=32, lr=3e-3, checkpoint_every=1, progress=False, deterministic=True, seed=1,
                num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_lowers_the_loss(tiny_data, tmp_path):
    summary = train(tiny_cfg(tiny_data, tmp_path, epochs=12, checkpoint_every=12, crop_size=64, lr=1e-2))
    hist = json.loads((tmp_path / "history.json").read_text())
    losses = [r["train/loss"] for r in hist]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0] - 0.1, losses
    assert summary["complete"] and "test/iou" in hist[-1]


def test_resume_after_stop_equals_straight_run(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path / "straight"))
    train(tiny_cfg(tiny_data, tmp_path / "chunked"), stop_after_epochs=2)
    assert load_checkpoint(tmp_path / "chunked" / CHECKPOINT_NAME)["epoch"] == 2
    train(tiny_cfg(tiny_data, tmp_path / "chunked"))
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "chunked" / CHECKPOINT_NAME)
    assert_same_weights(a["model"], b["model"])
    assert [r["train/loss"] for r in a["history"]] == [r["train/loss"] for r in b["history"]]
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def _train_cmd(cfg: TrainConfig):
    return [sys.executable, "-m", "sgem", "train", "--data", cfg.data_root, "--out", cfg.out_dir,
            "--model-kwargs", json.dumps(cfg.model_kwargs), "--epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--crop-size", str(cfg.crop_size), "--lr", str(cfg.lr),
            "--checkpoint-every", "1", "--no-progress", "--deterministic", "--seed", str(cfg.seed),
            "--num-threads", "1"]


def test_sigkilled_and_resumed_run_ends_with_the_same_weights(tiny_data, tmp_path):
    """Kill a real training process with SIGKILL mid-run, rerun it, compare with a straight run.

    40 short epochs, killed as soon as the second checkpoint exists: on any machine the
    kill lands well before the end (and maybe inside a checkpoint write)."""
    epochs = 40
    straight = tiny_cfg(tiny_data, tmp_path / "straight", epochs=epochs)
    train(straight)
    killed = tiny_cfg(tiny_data, tmp_path / "killed", epochs=epochs)
    ckpt = Path(killed.out_dir) / CHECKPOINT_NAME
    proc = subprocess.Popen(_train_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            try:
                if load_checkpoint(ckpt)["epoch"] >= 2:
                    break
            except ValueError:
                pass  # caught between write and rename: cannot happen with atomic writes, retry
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = load_checkpoint(ckpt)["epoch"]
    assert 2 <= done_before < epochs
    subprocess.run(_train_cmd(killed), check=True, capture_output=True)
    a, b = load_checkpoint(Path(straight.out_dir) / CHECKPOINT_NAME), load_checkpoint(ckpt)
    assert b["epoch"] == epochs
    assert_same_weights(a["model"], b["model"])
    # the DVCLive history has every epoch exactly once
    tsv = (Path(killed.out_dir) / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").read_text().split()
    steps = [int(x) for x in tsv[2::2]]
    assert steps == list(range(epochs))


@pytest.mark.parametrize("sig, rc, what", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_interrupted_run_says_what_is_kept_in_one_line_and_resumes(tiny_data, tmp_path, sig, rc, what):
    """Ctrl-C (SIGINT) or kill (SIGTERM) during `sgem train`: no traceback, one line naming
    the last checkpoint and its epoch, the run's lock released (the rerun does not have to
    take it over), and the same command resumes to the end."""
    cfg = tiny_cfg(tiny_data, tmp_path / "run", epochs=40)
    ckpt = Path(cfg.out_dir) / CHECKPOINT_NAME
    # SIGINT at its default in the child: a command started in the background of a shell script
    # (as a test run may be) inherits SIGINT ignored, and Python then installs no Ctrl-C handler
    proc = subprocess.Popen(_train_cmd(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ckpt.is_file():
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be stopped: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == rc, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    epoch = load_checkpoint(ckpt)["epoch"]
    assert line == (f"sgem train: {what}; its last checkpoint, {ckpt}, is at epoch {epoch}; "
                    f"run the same command again to resume from it")
    assert 1 <= epoch < 40
    again = subprocess.run(_train_cmd(cfg), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "lock" not in again.stderr
    assert load_checkpoint(ckpt)["epoch"] == 40


def test_kill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    good = {"format": "sgem-checkpoint-v1", "epoch": 3, "model": {"w": torch.ones(3)}}
    save_checkpoint(path, good)
    code = f"""
import os, signal, torch
from sgem.train import save_checkpoint
def half(obj, fh, *a, **k):
    fh.write(b"PK\\x03\\x04 half a checkpoint")
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = half
save_checkpoint({str(path)!r}, {{"format": "sgem-checkpoint-v1", "epoch": 4}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(f".{CHECKPOINT_NAME}.*.tmp"))  # the half-written temp file
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(3))


def test_checkpoint_loads_weights_only_and_holds_everything(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, epochs=1))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "best", "config", "history",
            "normalization"} <= set(state)
    assert state["config"]["model"] == "sgem_unet" and state["best"]["epoch"] == 1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    import sgem.train as T

    calls = {"n": 0}

    class PoisonedLoss(T.SoftIoULoss):
        def forward(self, logits, target):
            calls["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if calls["n"] > 4 else loss  # 2 steps/epoch: epoch 3 goes bad

    monkeypatch.setattr(T, "SoftIoULoss", PoisonedLoss)
    with pytest.raises(FloatingPointError, match="epoch 3.*last good checkpoint"):
        train(tiny_cfg(tiny_data, tmp_path, epochs=5))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_refuses_a_different_config(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, epochs=1))
    with pytest.raises(ValueError, match="lr: checkpoint 0.003 vs now 0.01.*on_config_change=restart"):
        train(tiny_cfg(tiny_data, tmp_path, epochs=1, lr=0.01))


def test_bad_config_is_named(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="crop_size=30"):
        train(tiny_cfg(tiny_data, tmp_path, crop_size=30))
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"data_root": "x", "learning_rate": 1})


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sgem", "train", "--data", str(tiny_data), "--out", str(tmp_path), "--epochs", "2",
           "--batch-size", "2", "--crop-size", "32", "--model-kwargs", json.dumps(TINY_MODEL),
           "--no-progress", "--device", "cpu", "--num-threads", "1", "--no-dvclive"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_pred_dir_scores_equal_in_memory_scores(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path / "run", epochs=3))
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    mem = evaluate_checkpoint(ckpt, tiny_data, save_pred=tmp_path / "pred")
    disk = evaluate_pred_dir(tmp_path / "pred", tiny_data)
    for k in ("iou", "niou", "precision", "recall", "f1", "pd", "fa", "fa_legacy"):
        assert disk[k] == pytest.approx(mem[k], nan_ok=True), k
    # and the saved maps, scored in memory, give exactly what --pred-dir gives (curves too)
    stems, _, masks = load_split(tiny_data, "test")
    m = IRSTDMetrics()
    for s, mask in zip(stems, masks):
        m.update(load_prediction(tmp_path / "pred" / f"{s}.png"), mask)
    assert m.compute()["pd_fa_curve"] == disk["pd_fa_curve"]


def test_evaluate_and_predict_cli(tiny_data, tmp_path, capsys):
    train(tiny_cfg(tiny_data, tmp_path / "run", epochs=1))
    ckpt = str(tmp_path / "run" / CHECKPOINT_NAME)
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(tiny_data), "--out", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert printed["iou"] == saved["iou"] and "fa_legacy" in saved and "roc" in saved
    assert saved["checkpoint"]["selection"] == "last epoch"
    odd = tmp_path / "odd.png"
    Image.fromarray(np.full((50, 70), 90, np.uint8)).save(odd)
    assert main(["predict", "--checkpoint", ckpt, str(odd), str(tiny_data / "images"), "--out",
                 str(tmp_path / "pred")]) == 0
    for suffix in ("mask", "prob", "overlay"):
        assert Image.open(tmp_path / "pred" / f"odd_{suffix}.png").size == (70, 50)
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == 17
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", ckpt, "--pred-dir", str(tmp_path), "--data", str(tiny_data)]) == 2
    assert "not both" in capsys.readouterr().err


def test_dvclive_never_initialises_dvc_in_the_users_repository(tiny_data, tmp_path, monkeypatch):
    repo = tmp_path / "user_repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.chdir(repo)
    train(tiny_cfg(tiny_data, repo / "run", epochs=1, dvclive=True))
    assert not (repo / ".dvc").exists()
    assert (repo / "run" / "dvclive" / "metrics.json").is_file()


def test_changed_settings_restart_when_asked(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, epochs=1))
    with pytest.warns(UserWarning, match="starting over"):
        summary = train(tiny_cfg(tiny_data, tmp_path, epochs=2, lr=0.01, on_config_change="restart"))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert summary["complete"] and state["config"]["lr"] == 0.01 and len(state["history"]) == 2
    assert (tmp_path / "checkpoint.previous.pt").is_file()


def test_exported_fp16_weights_evaluate_like_the_checkpoint(tiny_data, tmp_path, capsys):
    train(tiny_cfg(tiny_data, tmp_path / "run", epochs=2))
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "w.pt")]) == 0
    slim = torch.load(tmp_path / "w.pt", weights_only=True)
    assert "optimizer" not in slim and all(v.dtype != torch.float32 for v in slim["model"].values())
    assert (tmp_path / "w.pt").stat().st_size < ckpt.stat().st_size / 2
    full = evaluate_checkpoint(ckpt, tiny_data, curves=False)
    half = evaluate_checkpoint(tmp_path / "w.pt", tiny_data, curves=False)
    assert half["iou"] == pytest.approx(full["iou"], abs=0.02)


@pytest.mark.parametrize("name,kwargs", [("dnanet", {"widths": [4, 8, 16, 32, 64]}),  # deep supervision
                                         ("isnet", {"widths": [4, 8, 16, 32]})])          # its own loss
def test_baselines_train_with_the_same_engine(tiny_data, tmp_path, name, kwargs):
    summary = train(tiny_cfg(tiny_data, tmp_path, model=name, model_kwargs=kwargs, epochs=2))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert summary["complete"] and state["config"]["model"] == name
    assert all(np.isfinite(r["train/loss"]) for r in state["history"])
    assert 0.0 <= state["history"][-1]["test/iou"] <= 1.0


def test_gpu_path_options_run_on_cpu(tiny_data, tmp_path):
    """bf16 autocast and channels_last go through the same step code on any device."""
    summary = train(tiny_cfg(tiny_data, tmp_path, epochs=1, precision="bf16", channels_last=True,
                             deterministic=False))
    assert summary["complete"] and np.isfinite(summary["last"]["train/loss"])


def test_time_budget_stops_a_call_at_an_epoch_boundary(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, tmp_path, epochs=50, checkpoint_every=25)
    summary = train(cfg, stop_after_seconds=0.5)
    done = load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"]
    assert not summary["complete"] and 1 <= done < 50 and summary["epochs_done"] == done


def test_time_budget_is_not_spent_on_the_first_epochs_warm_up(tiny_data, tmp_path, monkeypatch):
    """A call's first epoch holds compilation and graph capture: once a second epoch is timed,
    the budget's estimate of one more epoch is the steady one, not the slow first."""
    from sgem.train import Trainer

    real = Trainer.train_one_epoch
    calls = []

    def slow_first(self):
        row = real(self)
        calls.append(row["epoch"])
        if len(calls) == 1:   # the warm-up: 1.5 s more
            time.sleep(1.5)
            row["train/seconds"] += 1.5
        return row

    monkeypatch.setattr(Trainer, "train_one_epoch", slow_first)
    cfg = tiny_cfg(tiny_data, tmp_path, epochs=10_000, checkpoint_every=10_000, deterministic=False)
    train(cfg, stop_after_seconds=4.0)
    history = load_checkpoint(tmp_path / CHECKPOINT_NAME)["history"]
    spent = sum(r["train/seconds"] for r in history)
    steady = max(r["train/seconds"] for r in history[1:])
    # with the first epoch as the estimate, the call would end once 4.0 - 1.5 s had passed
    assert steady < 0.4 and spent > 4.0 - 1.5 + steady, (spent, steady, len(history))


@pytest.mark.parametrize("change", [dict(precision="bf16"), dict(channels_last=True), dict(cuda_graph=True),
                                    pytest.param(dict(compile=True), marks=pytest.mark.slow)])
def test_step_settings_resume_instead_of_restarting(tiny_data, tmp_path, change):
    """How a step is computed may change between chunks of one run (on_config_change=error
    would refuse any other difference)."""
    if change.get("compile"):
        pytest.importorskip("torch._inductor")
    train(tiny_cfg(tiny_data, tmp_path, epochs=2, on_config_change="error", deterministic=False),
          stop_after_epochs=1)
    summary = train(tiny_cfg(tiny_data, tmp_path, epochs=2, on_config_change="error", deterministic=False,
                             **change))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert summary["complete"] and summary["epochs_done"] == 2 and len(state["history"]) == 2
    assert not (tmp_path / "checkpoint.previous.pt").exists()


def test_cuda_graph_without_cuda_falls_back_and_says_why(tiny_data, tmp_path):
    notices = []
    summary = train(tiny_cfg(tiny_data, tmp_path, epochs=1, cuda_graph=True), log=notices.append)
    assert summary["complete"] and summary["step_mode"] == "eager"
    assert any("cuda_graph needs a CUDA device" in n for n in notices) and summary["step_fallback"]


def test_fused_optimizer_state_matches_its_parameters_after_resume():
    """A state saved by plain Adam (CPU, contiguous) loads into fused Adam over
    channels_last parameters: every state tensor takes its parameter's layout, the step
    counter its device, and an update then equals plain Adam's."""
    from sgem.train import _match_optimizer_to_params, build_optimizer

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    cfg = TrainConfig(data_root="x", lr=1e-2)
    plain = build_optimizer(cfg, conv.parameters())
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    plain.step()
    import copy

    saved = copy.deepcopy(plain.state_dict())  # as read back from a checkpoint file

    twin = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    twin.load_state_dict(conv.state_dict())
    fused = build_optimizer(cfg, twin.parameters(), fused=True)
    fused.load_state_dict(saved)
    _match_optimizer_to_params(fused, fused=True)
    for p in twin.parameters():
        st = fused.state[p]
        assert st["exp_avg"].stride() == p.stride() and st["exp_avg_sq"].stride() == p.stride()
        assert st["step"].device == p.device and st["step"].dtype == torch.float32
    assert fused.param_groups[0]["fused"] is True

    x = torch.randn(2, 3, 8, 8)
    for m, opt in ((conv, plain), (twin, fused)):
        opt.zero_grad()
        m(x).sum().backward()
        opt.step()
    assert torch.allclose(conv.weight, twin.weight, atol=1e-6) and torch.allclose(conv.bias, twin.bias, atol=1e-6)


def test_no_progress_prints_one_flushed_line_per_epoch(tiny_data, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path), "--epochs", "2", "--batch-size", "4",
                 "--crop-size", "32", "--model-kwargs", json.dumps(TINY_MODEL), "--no-progress",
                 "--no-dvclive", "--num-threads", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith('{"epoch"')]
    assert [x["epoch"] for x in lines] == [1, 2] and all("train/images_per_s" in x for x in lines)


def test_history_is_written_with_each_checkpoint(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path, epochs=3, checkpoint_every=2), stop_after_epochs=1)
    # stop_now writes a checkpoint and the history with it
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    train(tiny_cfg(tiny_data, tmp_path, epochs=3, checkpoint_every=2))
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2, 3] == [r["epoch"] for r in load_checkpoint(
        tmp_path / CHECKPOINT_NAME)["history"]]


def test_warmup_then_cosine_schedule():
    from sgem.train import build_optimizer, build_scheduler

    cfg = TrainConfig(data_root="x", epochs=10, lr=1e-3, min_lr=1e-5, warmup_epochs=3)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(cfg, opt)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] > 1e-5  # cosine over the 7 others


def test_weight_ema_follows_the_formula():
    from sgem.train import WeightEMA

    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(m, decay=0.9)
    w0 = m[0].weight.detach().clone()
    with torch.no_grad():
        m[0].weight.add_(1.0)
    m[1].num_batches_tracked += 5
    ema.update(m)                       # d = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.module[0].weight, d * w0 + (1 - d) * (w0 + 1))
    assert int(ema.module[1].num_batches_tracked) == 5 and ema.updates == 1
    for _ in range(200):
        ema.update(m)
    assert torch.allclose(ema.module[0].weight, m[0].weight, atol=1e-6)   # converges to constant weights
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bn_recalibration_sets_the_statistics_of_the_data():
    from sgem.train import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    torch.nn.init.ones_(model[0].weight)
    images = [torch.full((1, 16, 16), float(v)) for v in (1.0, 2.0, 3.0, 4.0)]
    model.eval()
    n = recalibrate_batchnorm(model, images, mean=0.0, std=1.0, batch_size=2, channels_last=False,
                              autocast_dtype=None)
    bn = model[1]
    assert n == 4 and bn.running_mean.item() == pytest.approx(2.5)   # (1.5 + 3.5) / 2
    assert bn.running_var.item() == pytest.approx(0.25 * 512 / 511, rel=1e-4)  # unbiased batch variances
    assert bn.momentum == 0.1 and not model.training


def test_ema_final_crop_and_bn_recalibration_train_and_resume_exactly(tiny_data, tmp_path):
    kw = dict(epochs=4, ema_decay=0.9, final_crop_size=64, final_epochs=1, bn_recalibrate=True, warmup_epochs=1)
    straight = train(tiny_cfg(tiny_data, tmp_path / "a", **kw))
    train(tiny_cfg(tiny_data, tmp_path / "b", **kw), stop_after_epochs=2)
    train(tiny_cfg(tiny_data, tmp_path / "b", **kw))
    a, b = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["train_model"], b["train_model"])
    assert [r["train/crop"] for r in a["history"]] == [32, 32, 32, 64]
    assert a["ema_updates"] == 4 * 2 and straight["complete"]
    # what is evaluated and exported is the average, not the trained weights
    assert any(not torch.equal(a["model"][k], a["train_model"][k]) for k in a["model"])


def test_precision_auto_resolves_and_is_recorded(tiny_data, tmp_path, monkeypatch):
    import sgem.device as D

    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx2"})
    summary = train(tiny_cfg(tiny_data, tmp_path / "no", epochs=1, precision="auto", deterministic=False))
    # no native bf16: fp32, in channels_last on a CPU (faster there in fp32 too)
    assert summary["resolved"]["precision"] == "fp32" and summary["resolved"]["channels_last"]
    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx512_bf16"})
    summary = train(tiny_cfg(tiny_data, tmp_path / "yes", epochs=1, precision="auto", deterministic=False))
    assert summary["resolved"] == {**summary["resolved"], "precision": "bf16", "channels_last": True}
    assert load_checkpoint(tmp_path / "yes" / CHECKPOINT_NAME)["resolved"]["processor"]


def test_precision_auto_without_native_bf16_keeps_channels_last_to_the_cpu(monkeypatch):
    import sgem.device as D

    monkeypatch.setattr(D, "native_bf16", lambda device: False)
    assert D.resolve_precision("auto", "cpu") == ("fp32", True)
    assert D.resolve_precision("auto", torch.device("cuda")) == ("fp32", False)
    assert D.resolve_precision("fp32", "cpu") == ("fp32", False)   # explicit values stay as asked
    monkeypatch.setattr(D, "native_bf16", lambda device: True)
    assert D.resolve_precision("auto", torch.device("cuda")) == ("bf16", True)


def test_ablation_puts_models_and_seeds_side_by_side(tiny_data, tmp_path, capsys):
    runs = []
    for model, kw in (("sgem_unet", TINY_MODEL), ("unet", {"widths": [4, 8, 16, 32, 64]})):
        for seed in (1, 2):
            out = tmp_path / f"{model}_{seed}"
            train(tiny_cfg(tiny_data, out, epochs=2, model=model, model_kwargs=kw, seed=seed, checkpoint_every=2))
            runs.append(str(out))
    assert main(["ablation", *runs, "--out", str(tmp_path / "abl")]) == 0
    report = json.loads((tmp_path / "abl.json").read_text())
    assert report["order"] == ["sgem_unet", "unet"] and report["models"]["unet"]["seeds"] == [1, 2]
    first = report["models"]["sgem_unet"]
    assert first["mean"]["iou"] == pytest.approx(sum(r["iou"] for r in first["runs"]) / 2)
    md = (tmp_path / "abl.md").read_text()
    assert "| unet | 1, 2 |" in md and "seed-to-seed range" in md and "over 2 seeds per model" in md
    assert "an indication, not a statistical test" in md
    assert main(["ablation", runs[0], runs[2], "--out", str(tmp_path / "one")]) == 0   # one seed each
    assert "spread is not measured" in (tmp_path / "one.md").read_text()
    with pytest.raises(ValueError, match="not a complete run"):
        partial = tmp_path / "partial"
        train(tiny_cfg(tiny_data, partial, epochs=3), stop_after_epochs=1)
        from sgem.report import ablation
        ablation({"x": [partial]})


def test_grad_clip_bounds_each_step_and_logs_the_norms(tiny_data, tmp_path):
    """grad_clip: the gradient's global norm is cut to the limit before each step (with
    SGD, no momentum, a step then moves the weights by at most lr * limit); the epoch's
    norms before clipping are in the history."""
    common = dict(epochs=1, optimizer="sgd", momentum=0.0, scheduler="constant")
    train(tiny_cfg(tiny_data, tmp_path / "start", **common, lr=1e-30))   # the same initial weights, unmoved
    train(tiny_cfg(tiny_data, tmp_path / "clip", **common, lr=0.5, grad_clip=1e-4))
    row = json.loads((tmp_path / "clip" / "history.json").read_text())[-1]
    assert row["train/clipped_share"] == 1.0 and row["train/grad_norm_max"] >= row["train/grad_norm_mean"] > 1e-4
    w0, w1 = weights(tmp_path / "start" / CHECKPOINT_NAME), weights(tmp_path / "clip" / CHECKPOINT_NAME)
    moved = torch.cat([(w1[k].double() - w0[k].double()).flatten() for k in w0
                       if w0[k].is_floating_point() and "running" not in k])
    steps = 4   # at most: fewer than 16 training images at batch 4
    assert 0 < float(moved.norm()) <= 0.5 * 1e-4 * steps * 1.001
    train(tiny_cfg(tiny_data, tmp_path / "free", **common, lr=0.5))
    assert "train/grad_norm_mean" not in json.loads((tmp_path / "free" / "history.json").read_text())[-1]


def test_grad_clip_epochs_limits_the_clipping_to_the_first_epochs(tiny_data, tmp_path):
    """grad_clip_epochs: grad_clip cuts every step of the first N epochs only; after them
    the limit is grad_clip_late, and with none the norms are still logged, nothing clipped."""
    common = dict(epochs=3, optimizer="sgd", momentum=0.0, scheduler="constant", lr=0.5, grad_clip=1e-4)
    train(tiny_cfg(tiny_data, tmp_path / "free", **common, grad_clip_epochs=2))
    rows = json.loads((tmp_path / "free" / "history.json").read_text())
    assert [r["train/clipped_share"] for r in rows] == [1.0, 1.0, 0.0]
    assert rows[2]["train/grad_norm_mean"] > 1e-4
    train(tiny_cfg(tiny_data, tmp_path / "late", **common, grad_clip_epochs=1, grad_clip_late=1e-5))
    rows = json.loads((tmp_path / "late" / "history.json").read_text())
    assert [r["train/clipped_share"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["train/grad_clip"] for r in rows] == [1e-4, 1e-5, 1e-5]


def test_grad_clip_growth_fades_the_clipping_out(tiny_data, tmp_path):
    """grad_clip_growth g: after grad_clip_epochs the limit is grad_clip * g**k in the k-th
    epoch after them (logged as train/grad_clip), instead of no limit at once."""
    common = dict(epochs=4, optimizer="sgd", momentum=0.0, scheduler="constant", lr=0.5, grad_clip=1e-4)
    train(tiny_cfg(tiny_data, tmp_path / "grow", **common, grad_clip_epochs=2, grad_clip_growth=1e6))
    rows = json.loads((tmp_path / "grow" / "history.json").read_text())
    assert [r["train/grad_clip"] for r in rows] == pytest.approx([1e-4, 1e-4, 1e2, 1e8])
    assert rows[0]["train/clipped_share"] == 1.0 and rows[-1]["train/clipped_share"] == 0.0
    huge = TrainConfig(data_root="x", epochs=400, grad_clip=1.0, grad_clip_epochs=1, grad_clip_growth=1e9)
    assert math.isfinite(Trainer.clip_for(SimpleNamespace(cfg=huge), 399))   # no OverflowError


@pytest.mark.parametrize("kw, message", [
    (dict(grad_clip=1.0, grad_clip_epochs=4), r"grad_clip_epochs=4; expected an integer >= 0 and below epochs \(4\)"),
    (dict(grad_clip_epochs=2), r"grad_clip_epochs=2; expected 0 unless grad_clip > 0"),
    (dict(grad_clip=1.0, grad_clip_epochs=2, grad_clip_late=float("nan")), r"grad_clip_late=nan; expected a number"),
    (dict(grad_clip=1.0, grad_clip_late=10.0), r"grad_clip_late=10.0; expected 0 unless grad_clip_epochs > 0"),
    (dict(grad_clip=1.0, grad_clip_epochs=2, grad_clip_growth=0.5), r"grad_clip_growth=0.5; expected a number >= 1"),
    (dict(grad_clip=1.0, grad_clip_growth=1.5), r"grad_clip_growth=1.5; expected 1 unless grad_clip_epochs > 0"),
    (dict(grad_clip=1.0, grad_clip_epochs=2, grad_clip_late=5.0, grad_clip_growth=1.5),
     r"grad_clip_growth=1.5; expected 1 unless .* grad_clip_late is 0"),
])
def test_grad_clip_epochs_and_late_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data_root="x", epochs=4, **kw).validate()


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_grad_clip_must_be_a_finite_number_at_least_0(value):
    with pytest.raises(ValueError, match=r"grad_clip=.*; expected a number >= 0 \(0: no clipping\)"):
        TrainConfig(data_root="x", grad_clip=value).validate()


def test_false_alarm_crops_train_and_resume_exactly(tiny_data, tmp_path):
    """crop_false_alarms: the records (where each image's crops last showed a false alarm)
    are part of the checkpoint, so a run stopped and resumed places its crops, and ends,
    exactly as a straight run; the history says how many crops went to false alarms.
    The tiny network predicts no target pixel in a few epochs, so the records are written
    into its epoch-2 checkpoint by hand (as if it had fired at every image's top left pixel)."""
    import shutil

    kw = dict(epochs=5, crop_false_alarms=0.5, lr=1e-2)
    train(tiny_cfg(tiny_data, tmp_path / "straight", **kw), stop_after_epochs=2)
    ckpt = tmp_path / "straight" / CHECKPOINT_NAME
    state = load_checkpoint(ckpt)
    assert "false_alarms" in state and state["history"][-1]["train/false_alarm_crops"] == 0
    state["false_alarms"]["yx"][:] = 0   # a corner: uniform crops rarely cover (and clear) it
    save_checkpoint(ckpt, state)
    shutil.copytree(tmp_path / "straight", tmp_path / "chunked")
    train(tiny_cfg(tiny_data, tmp_path / "straight", **kw))
    train(tiny_cfg(tiny_data, tmp_path / "chunked", **kw), stop_after_epochs=1)
    assert (load_checkpoint(tmp_path / "chunked" / CHECKPOINT_NAME)["false_alarms"]["yx"] >= 0).any()
    train(tiny_cfg(tiny_data, tmp_path / "chunked", **kw))
    a = load_checkpoint(ckpt)
    b = load_checkpoint(tmp_path / "chunked" / CHECKPOINT_NAME)
    assert_same_weights(a["model"], b["model"])
    assert torch.equal(a["false_alarms"]["yx"], b["false_alarms"]["yx"])
    rows = a["history"]
    assert 0.2 < rows[2]["train/false_alarm_crops"] <= 0.5      # about half the crops of epoch 3
    assert [r["train/false_alarm_crops"] for r in rows] == [r["train/false_alarm_crops"] for r in b["history"]]
    assert rows[-1]["train/false_alarm_images"] == int((a["false_alarms"]["yx"][:, 0] >= 0).sum())
    train(tiny_cfg(tiny_data, tmp_path / "plain", epochs=2, lr=1e-2))
    assert "false_alarms" not in load_checkpoint(tmp_path / "plain" / CHECKPOINT_NAME)


def test_ddp_two_processes_agree_on_false_alarm_records(tiny_data, tmp_path):
    """With two processes each sees half the images per epoch; the records are merged so
    that both hold the same (the ranks' checksums include them)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sgem", "train", "--data", str(tiny_data), "--out", str(tmp_path), "--epochs", "3",
           "--batch-size", "2", "--crop-size", "32", "--model-kwargs", json.dumps(TINY_MODEL), "--lr", "0.01",
           "--crop-false-alarms", "0.5", "--checkpoint-every", "1",
           "--no-progress", "--device", "cpu", "--num-threads", "1", "--no-dvclive"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 3 and (state["false_alarms"]["epoch"] > 0).all()   # every image seen, merged


def _branch_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("branch_run", REPO / "tools" / "branch_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("trunk, change, straight", [
    (dict(bn_recalibrate=True), "bn_recalibrate=false", dict(bn_recalibrate=False)),
    (dict(final_epochs=1, final_crop_size=64), "final_epochs=0", dict(final_epochs=0, final_crop_size=64)),
])
def test_branched_run_equals_the_changed_protocol_run_from_scratch(tiny_data, tmp_path, trunk, change, straight):
    """tools/branch_run.py: a run branched from another run's epoch-2 checkpoint with a setting
    changed that acts after epoch 2 ends with the weights of that setting run from scratch."""
    train(tiny_cfg(tiny_data, tmp_path / "straight", **straight))
    train(tiny_cfg(tiny_data, tmp_path / "trunk", **trunk), stop_after_epochs=2)
    _branch_tool().branch(str(tmp_path / "trunk" / CHECKPOINT_NAME), str(tmp_path / "branch"), [change])
    train(tiny_cfg(tiny_data, tmp_path / "branch", **straight))
    a = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "branch" / CHECKPOINT_NAME)
    assert a["epoch"] == b["epoch"] == 4
    assert_same_weights(a["model"], b["model"])
    # and the trunk's own end differs (the change matters here), so the equality is the branch's doing
    train(tiny_cfg(tiny_data, tmp_path / "trunk", **trunk))
    c = load_checkpoint(tmp_path / "trunk" / CHECKPOINT_NAME)["model"]
    assert any(not torch.equal(a["model"][k], c[k]) for k in c)


def test_branch_refuses_settings_that_act_before_or_at_the_checkpoint(tiny_data, tmp_path):
    train(tiny_cfg(tiny_data, tmp_path / "run", epochs=3, final_epochs=1, final_crop_size=64))
    last = tmp_path / "run" / CHECKPOINT_NAME          # epoch 3 of 3
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cases = [(last, "bn_recalibrate=true", "holds epoch 3, but bn_recalibrate=True acts from epoch 3 of 3"),
             (last, "lr=0.1", "lr: not a setting that acts only after the checkpoint's epoch"),
             (last, "bn_recalibrate=3", "bn_recalibrate=3: expected a bool like the run's False"),
             (last, "final_epochs", "'final_epochs': expected KEY=VALUE")]
    state = load_checkpoint(last)
    state["epoch"] = 2                                 # epoch 3 trains at 64 under final_epochs 1 or 2
    save_checkpoint(tmp_path / "e2.pt", state)
    cases.append((tmp_path / "e2.pt", "final_epochs=2", "holds epoch 2, but final_epochs=2 acts from epoch 2 of 3"))
    for ckpt, arg, message in cases:
        r = subprocess.run([sys.executable, "tools/branch_run.py", str(ckpt), str(tmp_path / "new"), arg], cwd=REPO,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, (arg, r.stderr)
        assert not (tmp_path / "new").exists()
    r = subprocess.run([sys.executable, "tools/branch_run.py", str(tmp_path / "e2.pt"), str(tmp_path / "new"),
                        "final_epochs=0"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and load_checkpoint(tmp_path / "new" / CHECKPOINT_NAME)["config"]["final_epochs"] == 0


def test_keep_checkpoints_keeps_a_copy_at_the_named_epochs(tiny_data, tmp_path):
    """keep_checkpoints "1,3": the checkpoints of epochs 1 and 3 stay beside checkpoint.pt as
    checkpoint_e0001.pt and checkpoint_e0003.pt (written then even where checkpoint_every would
    skip them), each the run's state at that epoch; no other epoch is kept. It may change
    between the calls of one run (a resume is not refused)."""
    out = tmp_path / "kept"
    train(tiny_cfg(tiny_data, out, checkpoint_every=10, keep_checkpoints="1,3"), stop_after_epochs=2)
    assert sorted(p.name for p in out.glob("checkpoint_e*.pt")) == ["checkpoint_e0001.pt"]
    train(tiny_cfg(tiny_data, out, checkpoint_every=10, keep_checkpoints="3"))   # changed: resumed
    kept = {p.name: load_checkpoint(p) for p in out.glob("checkpoint_e*.pt")}
    assert sorted(kept) == ["checkpoint_e0001.pt", "checkpoint_e0003.pt"]
    assert [kept[n]["epoch"] for n in sorted(kept)] == [1, 3]
    assert [len(kept[n]["history"]) for n in sorted(kept)] == [1, 3]
    last = weights(out / CHECKPOINT_NAME)
    assert any(not torch.equal(kept["checkpoint_e0003.pt"]["model"][k], last[k]) for k in last)
    assert any(not torch.equal(kept["checkpoint_e0001.pt"]["model"][k], kept["checkpoint_e0003.pt"]["model"][k])
               for k in last)


@pytest.mark.parametrize("value, expected", [("15, 40,60", {15, 40, 60}), ([2, 3], {2, 3}), (4, {4}), ("", set())])
def test_keep_checkpoints_reads_a_string_a_list_or_an_epoch(value, expected):
    assert TrainConfig.from_dict({"data_root": "x", "epochs": 60, "keep_checkpoints": value}).kept_epochs == expected


@pytest.mark.parametrize("value", ["15,x", "0", "61", "1;2"])
def test_keep_checkpoints_outside_the_run_is_refused(value):
    with pytest.raises(ValueError, match=r"keep_checkpoints=.*; expected epochs in 1\.\.60 separated by commas"):
        TrainConfig(data_root="x", epochs=60, keep_checkpoints=value).validate()
