"""ONNX export with its parity check, the ONNX Runtime backend and int8 quantization."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sgem.cli import main
from sgem.models import list_models
from sgem.synthetic import make_synthetic

pytest.importorskip("onnx", reason="the [deploy] extra (onnx, onnxruntime) is not installed")
pytest.importorskip("onnxruntime", reason="the [deploy] extra (onnx, onnxruntime) is not installed")

TINY = {"sgem_unet": {"widths": [4, 8, 16, 32, 64], "sgem_dim": 16}, "unet": {"widths": [4, 8, 16, 32, 64]},
        "dnanet": {"widths": [4, 8, 16, 32, 64]}, "isnet": {"widths": [4, 8, 16, 32]}}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_and_passes_the_parity_check(tmp_path, name, capsys):
    kwargs = TINY.get(name, {})
    if name == "uiunet":
        pytest.skip("UIU-Net (50 M parameters) is exported by the slow test below")
    assert main(["export", "--format", "onnx", "--model", name, "--model-kwargs", json.dumps(kwargs),
                 "--parity-images", "2", "--out", str(tmp_path / f"{name}.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_logit_diff"] <= 1e-3 and report["mask_agreement"] >= 0.9999


@pytest.mark.slow
def test_uiunet_exports(tmp_path):
    assert main(["export", "--format", "onnx", "--model", "uiunet", "--parity-images", "1",
                 "--out", str(tmp_path / "u.onnx")]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sgem.train import TrainConfig, train

    root = tmp_path_factory.mktemp("deploy")
    make_synthetic(root / "data", n=16, size=64, seed=5)
    train(TrainConfig(data_root=str(root / "data"), out_dir=str(root / "run"), model_kwargs=TINY["sgem_unet"],
                      epochs=2, batch_size=4, crop_size=32, lr=3e-3, progress=False, dvclive=False, seed=1,
                      num_threads=1))
    ckpt = root / "run" / "checkpoint.pt"
    assert main(["export", "--format", "onnx", "--checkpoint", str(ckpt), "--data", str(root / "data"),
                 "--out", str(root / "m.onnx")]) == 0
    return root, ckpt


def test_onnxruntime_backend_gives_the_same_scores_and_masks(trained, capsys):
    root, ckpt = trained
    from sgem.evaluate import evaluate_checkpoint

    a = evaluate_checkpoint(ckpt, root / "data", curves=False)
    b = evaluate_checkpoint(root / "m.onnx", root / "data", curves=False, backend="onnxruntime")
    assert abs(a["iou"] - b["iou"]) < 1e-3 and a["counts"]["images"] == b["counts"]["images"]
    assert b["checkpoint"]["backend"] == "onnxruntime" and b["checkpoint"]["model"] == "sgem_unet"
    img = next((root / "data" / "images").iterdir())
    for backend, src in (("torch", ckpt), ("onnxruntime", root / "m.onnx")):
        assert main(["predict", str(img), "--checkpoint", str(src), "--backend", backend, "--precision", "fp32",
                     "--out", str(root / backend)]) == 0
    from PIL import Image

    m1 = np.asarray(Image.open(root / "torch" / f"{img.stem}_mask.png"))
    m2 = np.asarray(Image.open(root / "onnxruntime" / f"{img.stem}_mask.png"))
    assert np.mean(m1 != m2) < 1e-3


def test_int8_is_calibrated_on_training_images_and_recorded(trained, capsys):
    root, _ = trained
    assert main(["quantize", "--onnx", str(root / "m.onnx"), "--out", str(root / "q.onnx"), "--data",
                 str(root / "data"), "--calibration", "4"]) == 0
    from sgem.deploy import OnnxModel

    q = OnnxModel(root / "q.onnx")
    note = json.loads(q.meta["calibration"])
    train_stems = set((root / "data" / "train.txt").read_text().split())
    assert q.meta["precision"] == "int8" and note["split"] == "train" and set(note["stems"]) <= train_stems
    x = torch.randn(1, 1, 64, 64)
    assert q(x).shape == (1, 1, 64, 64)
    capsys.readouterr()
    assert main(["quantize", "--onnx", str(root / "m.onnx"), "--out", str(root / "q2.onnx"), "--data",
                 str(root / "data"), "--split", "test"]) == 2
    assert "never on the test split" in capsys.readouterr().err


def test_int8_activations_are_uint8_by_default_and_int8_on_request(trained, tmp_path):
    """U8S8 is what ONNX Runtime's x86 kernels compute fast (S8S8 ran no faster than fp32 on a
    VNNI Xeon); the activation type is in the graph and in the file's metadata."""
    import onnx

    from sgem.deploy import OnnxModel

    root, _ = trained
    for flag, dtype in ((), onnx.TensorProto.UINT8), (("--activations", "int8"), onnx.TensorProto.INT8):
        out = tmp_path / f"q{len(flag)}.onnx"
        assert main(["quantize", "--onnx", str(root / "m.onnx"), "--out", str(out), "--data", str(root / "data"),
                     "--calibration", "2", *flag]) == 0
        graph = onnx.load(str(out)).graph
        inits = {i.name: i for i in graph.initializer}
        x_q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
        assert inits[x_q.input[2]].data_type == dtype            # the input's zero point sets the type
        assert OnnxModel(out).meta["activations"] == ("uint8" if dtype == onnx.TensorProto.UINT8 else "int8")


def test_bad_onnx_inputs_are_named(trained, tmp_path, capsys):
    root, ckpt = trained
    from sgem.deploy import OnnxModel

    m = OnnxModel(root / "m.onnx")
    with pytest.raises(ValueError, match="multiples of 16, got 50x64"):
        m(torch.zeros(1, 1, 50, 64))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "junk.onnx"), "--backend", "onnxruntime",
                 "--data", str(root / "data")]) == 2
    assert main(["evaluate", "--checkpoint", str(ckpt), "--backend", "onnxruntime", "--data", str(root / "data")]) == 2
    assert main(["evaluate", "--checkpoint", str(root / "m.onnx"), "--data", str(root / "data")]) == 2
    err = capsys.readouterr().err
    assert "junk.onnx: not a loadable ONNX model" in err and "takes an .onnx file" in err
    assert "an ONNX file; use --backend onnxruntime" in err


def test_a_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    import sgem.deploy as D
    from sgem.models import create_model

    monkeypatch.setattr(D, "parity", lambda *a, **k: {"images": 1, "max_abs_logit_diff": 0.5, "mask_agreement": 0.9})
    with pytest.raises(ValueError, match="parity check failed"):
        D.export_onnx(create_model("acm").eval(), tmp_path / "a.onnx", name="acm", model_kwargs={},
                      normalization={"mean": 0.5, "std": 0.25}, images=[np.zeros((64, 64), np.float32)])
    assert not (tmp_path / "a.onnx").exists() and not list(tmp_path.glob(".a.onnx.*"))


def test_openvino_backend_matches_pytorch(trained, capsys):
    pytest.importorskip("openvino", reason="OpenVINO (the [deploy] extra) is not installed")
    root, ckpt = trained
    from sgem.deploy import OpenVinoModel
    from sgem.evaluate import evaluate_checkpoint

    fp32 = OpenVinoModel(root / "m.onnx", precision="fp32")
    from sgem.checkpoint import model_from_checkpoint

    model, state = model_from_checkpoint(ckpt)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(fp32(x), ref, atol=1e-3)
    assert fp32.normalization() == {"mean": state["normalization"]["mean"], "std": state["normalization"]["std"]}
    a = evaluate_checkpoint(ckpt, root / "data", curves=False)
    b = evaluate_checkpoint(root / "m.onnx", root / "data", curves=False, backend="openvino", precision="bf16")
    assert b["inference"] == {"backend": "openvino", "precision": "bf16", "channels_last": False, "requested": "bf16"}
    assert abs(a["iou"] - b["iou"]) < 0.05
    with pytest.raises(ValueError, match="multiples of 16"):
        fp32(torch.zeros(1, 1, 50, 64))


def test_bench_deploy_reports_each_phase_as_it_goes(trained, tmp_path, capsys, monkeypatch):
    """A run that takes tens of minutes on a slow CPU says what it is doing: one line per batch
    size timed and per path scored (and that bf16 is emulated where the CPU lacks it)."""
    import sgem.device as D

    root, ckpt = trained
    monkeypatch.setattr(D, "_cpu_flags", lambda: {"avx2"})
    assert main(["bench-deploy", "--checkpoint", str(ckpt), "--onnx", str(root / "m.onnx"), "--data",
                 str(root / "data"), "--batch", "1", "--warmup-s", "0", "--budget-s", "0",
                 "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert "sgem bench-deploy: this CPU has no native bf16" in err
    assert "sgem bench-deploy: timing 5 paths at batch 1" in err
    for k, r in enumerate(rows, 1):   # every path's accuracy pass, numbered, with the IoU it wrote
        assert f"sgem bench-deploy: accuracy {k}/{len(rows)}, {r['path']}: IoU {100 * r['iou']:.2f}" in err
