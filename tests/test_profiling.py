import pytest
import torch
from torch import nn

from sgem.profiling import count_flops_torch, count_macs, measure_latency, profile_model


class TinyAttention(nn.Module):
    """A conv plus a matrix product that module hooks cannot see."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)

    def forward(self, x):
        y = self.conv(x).flatten(2)                      # (1, 4, HW)
        return torch.matmul(y, y.transpose(1, 2))        # (1, 4, 4): 4*4*HW MACs


def test_module_count_misses_matmul_full_count_sees_it():
    m, hw = TinyAttention(), 8 * 8
    assert count_macs(m, (1, 8, 8), functional=False) == 4 * hw
    assert count_macs(m, (1, 8, 8), functional=True) == 4 * hw + 4 * 4 * hw
    assert count_flops_torch(m, (1, 8, 8)) == 2 * (4 * hw + 4 * 4 * hw)


def test_profile_reports_counts_and_timing_protocol():
    r = profile_model("unet", size=64, runs=3, warmup=1, model_kwargs={"widths": (4, 8, 16, 32, 64)})
    assert r["input_shape"] == [1, 1, 64, 64]
    assert r["params"] > 0 and r["macs_full"] >= r["macs_module"] > 0
    lat = r["latency_ms"]
    assert lat["runs"] == 3 and 0 < lat["median"] <= lat["p90"] + 1e-9
    assert r["fps"] == pytest.approx(1000 / lat["median"])
    assert r["environment"]["torch"] == torch.__version__
    assert "synchronised" in r["protocol"]


def test_batch_scales_fps_not_macs():
    kw = {"widths": (4, 8, 16, 32, 64)}
    a = profile_model("unet", size=32, batch=1, timing=False, model_kwargs=kw)
    b = profile_model("unet", size=32, batch=4, runs=2, warmup=0, model_kwargs=kw)
    assert a["macs_module"] == b["macs_module"]
    assert b["fps"] == pytest.approx(4000 / b["latency_ms"]["median"])


def test_bad_requests_are_explained():
    with pytest.raises(ValueError, match="fp16"):
        profile_model("unet", size=32, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="multiples of 16"):
        profile_model("unet", size=250, timing=False)
    with pytest.raises(ValueError, match="runs"):
        measure_latency(nn.Identity(), torch.zeros(1), runs=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_request_without_cuda_is_explained():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        profile_model("unet", size=32, device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_profile(precision):
    r = profile_model("sgem_unet", device="cuda", precision=precision, runs=5, warmup=2)
    assert r["environment"]["gpu"] and r["fps"] > 0
