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


def test_transposed_convolutions_can_be_counted_as_thop_does():
    m = nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, bias=False)
    real = count_macs(m, (2, 8, 8), functional=False)
    thop = count_macs(m, (2, 8, 8), functional=False, transposed="output")
    assert real == 8 * 8 * 2 * 3 * 16          # each input pixel meets each kernel tap once
    assert thop == 16 * 16 * 3 * 2 * 16 == 4 * real


def test_bench_interleaves_every_model_and_writes_reports(tmp_path, capsys):
    from sgem.cli import main
    from sgem.models import list_models

    assert main(["bench", "--size", "32", "--batch", "1", "2", "--runs", "2", "--warmup", "0",
                 "--out-dir", str(tmp_path)]) == 0
    import json
    report = json.loads((tmp_path / "bench_cpu.json").read_text())
    rows = report["results"]
    assert {r["model"] for r in rows} == set(list_models()) and {r["batch"] for r in rows} == {1, 2}
    assert all(r["fps"] > 0 and r["runs"] == 2 for r in rows)
    assert all(r["fps_ratio_to_sgem_unet"] == pytest.approx(1.0) for r in rows if r["model"] == "sgem_unet")
    md = (tmp_path / "bench_cpu.md").read_text()
    assert "sgem_unet FPS =" in md and "dnanet" in md and report["command"].startswith("sgem bench")


@pytest.mark.parametrize("name", ["dnanet", "acm"])
def test_baselines_explain_bad_sizes_when_profiled(name):
    with pytest.raises(ValueError, match="multiples of 16"):
        profile_model(name, size=250, timing=False)


def test_bench_modes_channels_last_and_time_based_warmup(tmp_path):
    from sgem.bench import bench

    r = bench(["sgem_unet", "acm"], device="cpu", batches=[1], modes=["fp32", "fp32+cl"], size=32, runs=2,
              warmup=1, warmup_s=0.2)
    rows = r["results"]
    assert [(x["model"], x["mode"]) for x in rows] == [("sgem_unet", "fp32"), ("acm", "fp32"),
                                                       ("sgem_unet", "fp32+cl"), ("acm", "fp32+cl")]
    assert all(x["channels_last"] == (x["mode"] == "fp32+cl") and x["runs"] == 2 for x in rows)
    assert all(x["warmup_runs"] >= 1 for x in rows) and r["warmup_s"] == 0.2


@pytest.mark.parametrize("mode,msg", [("fp8", "expected a precision"), ("bf16+cl+cl", "expected a precision"),
                                      ("fp32+graph", "needs a CUDA device")])
def test_bench_bad_modes_are_explained(mode, msg):
    from sgem.bench import bench

    with pytest.raises(ValueError, match=msg):
        bench(["acm"], device="cpu", modes=[mode], size=32, runs=1)


def test_bench_times_without_ptflops(monkeypatch):
    """ptflops is optional for timing: MACs are then null, the timing is still there."""
    import sys

    from sgem.bench import bench, to_markdown

    monkeypatch.setitem(sys.modules, "ptflops", None)  # `import ptflops` fails as if not installed
    r = bench(["acm"], device="cpu", batches=[1], size=32, runs=1, warmup=0)
    assert r["results"][0]["macs_module"] is None and r["results"][0]["fps"] > 0
    assert "| acm | 1 | fp32 |" in to_markdown(r)


def test_speed_reports_name_the_cpu_beyond_its_often_generic_name(monkeypatch):
    """'Intel(R) Xeon(R) Processor' covers CPUs with and without AMX: every environment record
    carries family/model, the exposed instruction sets and whether bf16 is native."""
    import sgem.device as D
    from sgem.profiling import cpu_description, environment_info

    monkeypatch.setattr(D, "_cpuinfo", lambda: {"model name": "Intel(R) Xeon(R) Processor", "cpu family": "6",
                                                 "model": "207", "flags": "fpu avx2 avx512f amx_bf16 amx_tile"})
    env = environment_info("cpu")
    assert env["cpu"] == "Intel(R) Xeon(R) Processor" and env["cpu_family_model"] == "6/207"
    assert env["cpu_isa"] == ["avx2", "avx512f", "amx_bf16"] and env["cpu_native_bf16"] is True
    assert cpu_description(env) == "Intel(R) Xeon(R) Processor (family/model 6/207; AVX2 AVX512F AMX_BF16)"
    monkeypatch.setattr(D, "_cpuinfo", lambda: {"model name": "Intel(R) Xeon(R) Processor", "flags": "avx2"})
    env = environment_info("cpu")
    assert env["cpu_native_bf16"] is False and cpu_description(env) == "Intel(R) Xeon(R) Processor (AVX2)"
    # records written before these fields existed still read
    assert cpu_description({"cpu": "AMD EPYC", "torch_threads": 2}) == "AMD EPYC"
