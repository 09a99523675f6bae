"""tools/fit_check.py: a checkpoint scored on its own training images, both weight sets."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fit_check_agrees_with_evaluate_and_scores_both_weight_sets(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    py = [sys.executable, "-m", "sgem"]
    subprocess.run([*py, "make-synthetic", str(data), "--n", "16", "--size", "64"], cwd=REPO, check=True,
                   capture_output=True)
    subprocess.run([*py, "train", "--data", str(data), "--out", str(run), "--model", "unet", "--epochs", "2",
                    "--batch-size", "4", "--crop-size", "32", "--ema-decay", "0.5", "--no-progress", "--no-dvclive"],
                   cwd=REPO, check=True, capture_output=True)
    ev = tmp_path / "eval.json"
    subprocess.run([*py, "evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--data", str(data), "--split", "train",
                    "--precision", "auto", "--no-curves", "--out", str(ev)], cwd=REPO, check=True, capture_output=True)
    out = tmp_path / "fit.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    png = tmp_path / "worst.png"
    r = subprocess.run([sys.executable, "tools/fit_check.py", str(run / "checkpoint.pt"), str(data), "--every", "1",
                        "--out", str(out), "--show", "2", "--show-out", str(png)],
                       cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in r.stdout
    fit = json.loads(out.read_text())
    assert fit["images"] == len((data / "train.txt").read_text().split())
    assert fit["epoch"] == 2   # which checkpoint of a run was scored
    assert set(fit["weights"]) == {"model", "train_model"}
    # the weights evaluate uses, on the same images: the same pooled IoU
    assert abs(fit["weights"]["model"]["iou"] - json.loads(ev.read_text())["iou"]) < 1e-6
    for w in fit["weights"].values():
        assert sum(n for _, n in w["worst"]) <= w["false_alarm_pixels"]
        assert [n for _, n in w["worst"]] == sorted((n for _, n in w["worst"]), reverse=True)


def test_fit_check_names_a_missing_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "tools/fit_check.py", str(tmp_path / "none.pt"), str(tmp_path)], cwd=REPO,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "none.pt: not found" in r.stderr and "Traceback" not in r.stderr


def test_fit_check_show_needs_its_output_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra in (["--show", "3"], ["--show-out", str(tmp_path / "w.png")]):
        r = subprocess.run([sys.executable, "tools/fit_check.py", str(tmp_path), str(tmp_path), *extra], cwd=REPO,
                           env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "--show K (K >= 1) and --show-out PNG go together" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_fit_check_counts_false_alarms_per_image_at_threshold_half(monkeypatch):
    """Known probability maps: image a has 3 false-alarm pixels at 0.9 and 5 at 0.4 (below
    the threshold), image b none; the target pixels of both are found."""
    import importlib.util

    import numpy as np
    spec = importlib.util.spec_from_file_location("fit_check", REPO / "tools" / "fit_check.py")
    fc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fc)
    masks = [np.zeros((8, 8), bool), np.zeros((8, 8), bool)]
    masks[0][0, 0] = masks[1][7, 7] = True
    probs = [np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32)]
    probs[0][0, 0] = probs[1][7, 7] = 0.8
    probs[0][4, :3] = 0.9
    probs[0][5, :5] = 0.4
    monkeypatch.setattr(fc, "load_checkpoint", lambda p: {"model": {}, "normalization": {"mean": 0.0, "std": 1.0}})
    monkeypatch.setattr(fc, "load_split", lambda root, split: (["a", "b"], [m.astype(np.float32) for m in masks], masks))
    monkeypatch.setattr(fc, "model_from_checkpoint", lambda state: (None, state))
    monkeypatch.setattr(fc, "predict_probs", lambda model, images, **kw: probs)
    r = fc.fit_check("ck.pt", "root", every=1)
    w = r["weights"]["model"]
    assert set(r["weights"]) == {"model"}          # no raw weights in this checkpoint: one set scored
    assert w["worst"][:2] == [["a", 3], ["b", 0]] and w["false_alarm_pixels"] == 3
    assert abs(w["iou"] - 2 / 5) < 1e-9             # 2 targets found, union 2 + 3 false alarms


def test_fit_check_recalibrates_on_every_image_of_the_split_not_the_scored_subset(monkeypatch):
    """With bn_recalibrate, each weight set is scored as saved and again after
    recalibrate_batchnorm has seen all images of the split (every=2 scores only half)."""
    import importlib.util

    import numpy as np
    spec = importlib.util.spec_from_file_location("fit_check", REPO / "tools" / "fit_check.py")
    fc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fc)
    masks = [np.zeros((8, 8), bool) for _ in range(4)]
    for m in masks:
        m[0, 0] = True
    seen = []

    class Model:
        recalibrated = False

        def eval(self):
            return self

    def predict(model, images, **kw):
        # a recalibrated model finds the targets, one as saved predicts nothing
        return [m.astype(np.float32) if model.recalibrated else np.zeros((8, 8), np.float32) for m in masks[:len(images)]]

    def recal(model, images, **kw):
        seen.append(len(images))
        model.recalibrated = True
        return len(images)

    monkeypatch.setattr(fc, "load_checkpoint", lambda p: {"model": {}, "train_model": {}, "config": {"batch_size": 8},
                                                          "normalization": {"mean": 0.0, "std": 1.0}})
    monkeypatch.setattr(fc, "load_split", lambda root, split: (list("abcd"), [m.astype(np.float32) for m in masks], masks))
    monkeypatch.setattr(fc, "model_from_checkpoint", lambda state: (Model(), state))
    monkeypatch.setattr(fc, "predict_probs", predict)
    monkeypatch.setattr(fc, "recalibrate_batchnorm", recal)
    r = fc.fit_check("ck.pt", "root", every=2, bn_recalibrate=True)
    assert r["images"] == 2 and seen == [4, 4]
    assert {k: w["iou"] for k, w in r["weights"].items()} == {"model": 0.0, "train_model": 0.0}
    assert {k: w["iou"] for k, w in r["recalibrated"].items()} == {"model": 1.0, "train_model": 1.0}
    assert "recalibrated" not in fc.fit_check("ck.pt", "root", every=2)
