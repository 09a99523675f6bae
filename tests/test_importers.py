"""Other toolboxes' checkpoints converted and scored with sgem's metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import real_dataset
import torch

from sgem.checkpoint import model_from_checkpoint
from sgem.cli import main
from sgem.importers import RESNET_BLOCK_RULES, import_checkpoint
from sgem.models import create_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LESPS_ACM = SHARED / "checkpoints" / "LESPS_SIRST3_ACM_full.pth.tar"
NUDT = real_dataset("NUDT-SIRST")   # data/NUDT-SIRST or $SGEM_DATA/NUDT-SIRST (conftest)


def basicirstd_names(state: dict) -> dict:
    """sgem's ACM keys written as BasicIRSTD names them (the rules run backwards)."""
    back = [(r"\.body\.0\.", ".conv1."), (r"\.body\.1\.", ".bn1."), (r"\.body\.3\.", ".conv2."),
            (r"\.body\.4\.", ".bn2."), (r"\.down\.", ".downsample."), (r"^head\.", "head.block.")]
    out = {}
    for k, v in state.items():
        for a, b in back:
            k = re.sub(a, b, k)
        out[k] = v
    return out


def test_a_basicirstd_style_acm_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    src_model = create_model("acm")
    for m in src_model.modules():   # non-trivial statistics, so that a wrong mapping shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    wrapped = {"state_dict": {f"model.{k}": v for k, v in basicirstd_names(src_model.state_dict()).items()}}
    torch.save(wrapped, tmp_path / "theirs.pth.tar")
    summary = import_checkpoint(tmp_path / "theirs.pth.tar", "acm", mean=95.0, std=41.5, out=tmp_path / "ours.pt")
    assert summary["tensors"] == len(src_model.state_dict()) and summary["unused_source_keys"] == []
    model, state = model_from_checkpoint(tmp_path / "ours.pt")
    x = torch.randn(2, 1, 64, 64)
    src_model.eval()
    assert torch.equal(model(x), src_model(x))
    assert state["normalization"]["mean"] == pytest.approx(95.0 / 255) and state["imported_from"]["sha256"]


def test_a_mismatching_checkpoint_names_the_tensor_and_both_shapes(tmp_path, capsys):
    wide = create_model("acm", widths=[16, 32, 64, 128])
    torch.save({"net": {f"module.{k}": v for k, v in basicirstd_names(wide.state_dict()).items()}},
               tmp_path / "wide.pth")
    code = main(["import-checkpoint", str(tmp_path / "wide.pth"), "--model", "acm", "--mean", "95", "--std", "41",
                 "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "tensor 'stem.1.weight' is (16, 1, 3, 3) in the file, (8, 1, 3, 3) in sgem's model" in err
    assert not (tmp_path / "x.pt").exists()
    assert main(["import-checkpoint", str(tmp_path / "wide.pth"), "--model", "isnet", "--mean", "95", "--std", "41",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "no import rules for model 'isnet'" in capsys.readouterr().err


def test_rules_cover_every_basicirstd_block_name():
    names = ["layer1.0.conv1.weight", "layer1.0.bn2.running_var", "layer2.0.downsample.1.bias", "head.block.4.bias"]
    out = []
    for k in names:
        for a, b in RESNET_BLOCK_RULES:
            k = re.sub(a, b, k)
        out.append(k)
    assert out == ["layer1.0.body.0.weight", "layer1.0.body.4.running_var", "layer2.0.down.1.bias", "head.4.bias"]


@pytest.mark.nudt
@pytest.mark.skipif(not (LESPS_ACM.is_file() and NUDT is not None),
                    reason="LESPS's ACM checkpoint or NUDT-SIRST not present beside the repository")
def test_lesps_acm_scores_its_published_nudt_sirst_iou(tmp_path, capsys):
    """LESPS (CVPR 2023), Table 1, ACM with full labels on SIRST3: NUDT-SIRST test IoU 57.42."""
    assert main(["import-checkpoint", str(LESPS_ACM), "--model", "acm", "--mean", "95.010", "--std", "41.511",
                 "--out", str(tmp_path / "acm.pt")]) == 0
    from sgem.evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(tmp_path / "acm.pt", NUDT, curves=False)
    assert round(r["iou"] * 100, 2) == 57.42
    assert r["counts"]["images"] == 664 and abs(r["pd"] * 100 - 91.75) < 0.5   # their Pd code differs in detail


def test_a_basicirstd_style_dnanet_round_trips_exactly(tmp_path):
    """BasicIRSTD names the spatial gate's conv `sa.conv1` and the four heads `final1..4`."""
    torch.manual_seed(0)
    src_model = create_model("dnanet", widths=[4, 8, 16, 32, 64]).eval()
    theirs = {}
    for k, v in src_model.state_dict().items():
        k = re.sub(r"\.sa\.conv\.", ".sa.conv1.", k)
        k = re.sub(r"^heads\.(\d)\.", lambda m: f"final{int(m.group(1)) + 1}.", k)
        theirs[k] = v
    assert "final4.weight" in theirs and any(".sa.conv1." in k for k in theirs)
    torch.save({"state_dict": theirs}, tmp_path / "dnanet.pth.tar")
    import_checkpoint(tmp_path / "dnanet.pth.tar", "dnanet", mean=107.8, std=33.0, out=tmp_path / "d.pt",
                      model_kwargs={"widths": [4, 8, 16, 32, 64]})
    model, _ = model_from_checkpoint(tmp_path / "d.pt")
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(model(x), src_model(x))


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _peer_keys(model: str) -> dict[str, tuple[int, ...]]:
    """BasicIRSTD's tensor names and shapes for ``model`` (written from its code)."""
    out = {}
    for line in (FIXTURES / f"basicirstd_{model}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            out[name] = () if shape == "-" else tuple(int(s) for s in shape.split("x"))
    return out


@pytest.mark.parametrize("model, n_peer, unused_modules", [("alcnet", 359, {"uplayer1", "uplayer2"}),
                                                            ("uiunet", 942, set())])
def test_import_rules_map_every_basicirstd_tensor_onto_sgem(model, n_peer, unused_modules):
    """Every tensor sgem's model has comes from exactly one BasicIRSTD tensor of the same
    shape; the only leftovers are the modules the reference defines but never runs."""
    from sgem.importers import rename

    peer = _peer_keys(model)
    assert len(peer) == n_peer
    renamed = rename({k: torch.empty(s) for k, s in peer.items()}, model)
    assert len(renamed) == len(peer)   # no two names collapse into one
    ours = create_model(model).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == \
        {k: tuple(v.shape) for k, v in renamed.items() if k in ours}
    assert {k.split(".")[0] for k in set(renamed) - set(ours)} == unused_modules


def synthetic_weight(name: str, shape: tuple[int, ...], gain: float) -> torch.Tensor:
    """Deterministic weights from a tensor's BasicIRSTD name (the fixture's outputs were
    made with these): BatchNorm statistics and affine terms near their usual values,
    convolutions uniform with variance gain/(3 fan_in)."""
    import math
    import zlib

    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    u = torch.rand(shape, generator=g)
    if name.endswith("running_var"):
        return 0.5 + u
    if name.endswith("running_mean"):
        return 0.2 * (u - 0.5)
    if len(shape) == 1:
        return 0.5 + u if name.endswith("weight") and ("bn" in name or ".1." in name) else 0.2 * (u - 0.5)
    return (u - 0.5) * 2 * math.sqrt(gain / math.prod(shape[1:]))


@pytest.mark.parametrize("model", ["alcnet", "uiunet"])
def test_imported_weights_compute_what_basicirstds_own_code_computes(model, tmp_path):
    """Not circular: the reference numbers come from running BasicIRSTD's code with these
    weights (tests/fixtures/basicirstd_outputs.json); a rule that swaps two layers of the
    same shape passes the name checks above but changes this output."""
    import json

    ref = json.loads((FIXTURES / "basicirstd_outputs.json").read_text())[model]
    theirs = {name: synthetic_weight(name, shape, ref["gain"]) for name, shape in _peer_keys(model).items()}
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in theirs.items()}}, tmp_path / "t.pth.tar")
    import_checkpoint(tmp_path / "t.pth.tar", model, mean=107.8, std=33.0, out=tmp_path / "o.pt")
    net, _ = model_from_checkpoint(tmp_path / "o.pt")
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net.eval()(x).double().flatten()
    idx = torch.linspace(0, y.numel() - 1, 16).long()
    assert y[idx].tolist() == pytest.approx(ref["samples"], abs=2e-4)
    assert (y.mean().item(), y.std().item()) == pytest.approx((ref["mean"], ref["std"]), abs=2e-4)
