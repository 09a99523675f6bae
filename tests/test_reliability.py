"""No silent wrong numbers and no lost work (each test names the defect it guards)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sgem.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from sgem.cli import main
from sgem.io import RunLock
from sgem.synthetic import make_synthetic
from sgem.train import Trainer, TrainConfig, train

TINY_MODEL = {"widths": [4, 8, 16, 32, 64], "sgem_dim": 16}


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    make_synthetic(root, n=16, size=64, seed=5)
    return root


def cfg(data, out, **kw):
    base = dict(data_root=str(data), out_dir=str(out), model_kwargs=dict(TINY_MODEL), epochs=3, batch_size=4,
                crop_size=32, lr=3e-3, checkpoint_every=1, progress=False, deterministic=True, seed=1,
                num_threads=1, dvclive=False)
    base.update(kw)
    return TrainConfig(**base)


def test_a_test_stem_in_the_training_list_is_refused_before_epoch_1(data, tmp_path):
    test_stem = (data / "test.txt").read_text().split()[0]
    with open(data / "train.txt", "a") as fh:
        fh.write(test_stem + "\n")
    with pytest.raises(ValueError, match=f"stem '{test_stem}' is also in split"):
        train(cfg(data, tmp_path / "run"))
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    summary = train(cfg(data, tmp_path / "run", epochs=1, allow_split_overlap=True))   # when asked for
    assert summary["complete"]


def test_a_broken_evaluation_split_is_found_before_epoch_1(data, tmp_path):
    victim = (data / "test.txt").read_text().split()[0]
    (data / "masks" / f"{victim}.png").unlink()
    with pytest.raises(ValueError, match=f"mask for stem '{victim}'"):
        train(cfg(data, tmp_path / "run"))
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_the_final_checkpoint_is_written_before_the_final_evaluation(data, tmp_path, monkeypatch):
    import sgem.evaluate as E

    def broken(*a, **k):
        raise RuntimeError("evaluation failed")

    original = E.evaluate_model
    monkeypatch.setattr(E, "evaluate_model", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(cfg(data, tmp_path / "run"))
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["epoch"] == 3
    # a rerun does the missing final evaluation, without training again
    monkeypatch.setattr(E, "evaluate_model", original)
    summary = train(cfg(data, tmp_path / "run"))
    assert "test/iou" in summary["last"] and summary["epochs_done"] == 3
    assert "test/iou" in load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["history"][-1]


def test_a_second_run_on_the_same_folder_stops_at_once(data, tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    try:
        with pytest.raises(RuntimeError, match=f"another run is using this folder \\(pid {os.getpid()}"):
            train(cfg(data, tmp_path / "run"))
        assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    finally:
        lock.release()
    # a lock left by a process that is gone is taken over, with a notice
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename,
                                                         "since": "yesterday"}))
    notices = []
    summary = train(cfg(data, tmp_path / "run", epochs=1), log=notices.append)
    assert summary["complete"] and any("taking over the lock" in n for n in notices)
    assert not (tmp_path / "run" / ".lock").exists()


def test_history_json_is_rebuilt_from_the_checkpoint_even_for_a_finished_run(data, tmp_path):
    train(cfg(data, tmp_path / "run", epochs=2))
    (tmp_path / "run" / "history.json").write_text("[]")   # a kill between checkpoint and history write
    summary = train(cfg(data, tmp_path / "run", epochs=2))
    assert summary["complete"]
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [1, 2] and "test/iou" in hist[-1]


def test_restarts_keep_every_earlier_run(data, tmp_path):
    train(cfg(data, tmp_path / "run", epochs=1))
    for lr in (0.01, 0.02):
        with pytest.warns(UserWarning, match="starting over"):
            train(cfg(data, tmp_path / "run", epochs=1, lr=lr, on_config_change="restart"))
    assert (tmp_path / "run" / "checkpoint.previous.pt").is_file()
    assert (tmp_path / "run" / "checkpoint.previous-2.pt").is_file()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.previous.pt")["config"]["lr"] == 3e-3
    assert load_checkpoint(tmp_path / "run" / "checkpoint.previous-2.pt")["config"]["lr"] == 0.01


def test_non_finite_weights_stop_the_run_at_their_epoch(data, tmp_path, monkeypatch):
    original = Trainer.train_one_epoch

    def poisoned(self):
        row = original(self)
        if self.epoch == 2:   # the loss stays finite, a BatchNorm statistic overflows
            bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("inf"))
        return row

    monkeypatch.setattr(Trainer, "train_one_epoch", poisoned)
    with pytest.raises(FloatingPointError, match="running_var after epoch 2.*epoch 1\\) is finite"):
        train(cfg(data, tmp_path / "run", epochs=4))
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_predict_and_evaluate_refuse_non_finite_weights(data, tmp_path, capsys):
    train(cfg(data, tmp_path / "run", epochs=1))
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    state = load_checkpoint(ckpt)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key].fill_(float("nan"))
    save_checkpoint(tmp_path / "bad.pt", state)
    img = next((data / "images").iterdir())
    assert main(["predict", str(img), "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "p")]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("hold NaN or infinite values") == 2 and "Traceback" not in err


@pytest.mark.parametrize("yaml_text,msg", [
    ("train:\n  lr: 1e-3\n  seed: abc\n", "seed='abc' (str); expected an integer"),
    ("train:\n  deterministic: 'false'\n", "deterministic='false' (str); expected true or false"),
    ("train:\n  lr: [1, 2\n", "not valid YAML (line"),
])
def test_bad_yaml_is_a_one_line_error(data, tmp_path, capsys, yaml_text, msg):
    (tmp_path / "p.yaml").write_text(yaml_text)
    code = main(["train", "--params", str(tmp_path / "p.yaml"), "--params-key", "train", "--data", str(data),
                 "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_yaml_1_1_float_strings_are_read_as_numbers(data, tmp_path):
    c = TrainConfig.from_dict({"data_root": str(data), "lr": "1e-3", "min_lr": 1})
    assert c.lr == 1e-3 and isinstance(c.min_lr, float)


def test_errors_name_the_file(data, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "afile"), "--epochs", "1"]) == 2
    (data / "bad.txt").write_bytes(b"\xff\xfe\xfa stem\n")
    assert main(["check-data", str(data), "--split", "train=bad.txt"]) in (1, 2)
    img = next((data / "images").iterdir())
    assert main(["predict", str(img), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr()
    text = err.err + err.out
    assert "afile: is a file; out_dir must be a folder" in text and "bad.txt: split list is not UTF-8" in text
    assert "afile: is a file; --out must be a folder" in text and "Traceback" not in text


def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_old_file(data, tmp_path, monkeypatch, capsys):
    train(cfg(data, tmp_path / "run", epochs=2), stop_after_epochs=1)
    before = (tmp_path / "run" / CHECKPOINT_NAME).read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1024 vs 512")

    monkeypatch.setattr(torch, "save", full)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "4",
                 "--crop-size", "32", "--model-kwargs", json.dumps(TINY_MODEL), "--lr", "0.003", "--seed", "1",
                 "--checkpoint-every", "1", "--deterministic", "--num-threads", "1", "--no-progress",
                 "--no-dvclive"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt: could not write the checkpoint" in err and "is the disk full?" in err
    assert (tmp_path / "run" / CHECKPOINT_NAME).read_bytes() == before


def test_predict_refuses_inputs_that_would_overwrite_each_other(tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / d / "x.png")
    assert main(["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "p")]) == 2
    assert "would overwrite each other's outputs" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_large_images_are_predicted_in_tiles_like_the_whole(tmp_path):
    from sgem.evaluate import predict_probs
    from sgem.models import create_model

    torch.manual_seed(0)
    model = create_model("sgem_unet", **TINY_MODEL).eval()
    img = np.random.default_rng(0).random((150, 200), dtype=np.float32) * 0.2 + 0.3
    img[70:73, 90:93] = 1.0
    whole = predict_probs(model, [img], mean=0.4, std=0.2)[0]
    tiled = predict_probs(model, [img], mean=0.4, std=0.2, tile=64)[0]
    assert tiled.shape == whole.shape and np.abs(tiled - whole).mean() < 0.02
    with pytest.raises(ValueError, match="tile must be a multiple of 16"):
        predict_probs(model, [img], mean=0.4, std=0.2, tile=50)


def test_ctrl_c_in_any_command_is_one_line(monkeypatch, capsys):
    """Ctrl-C during a command (here `sgem models`, made to raise it) ends with one line and
    exit status 130, not a traceback."""
    import sgem.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_cmd_models", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "sgem models: interrupted\n"
