"""Training-step speed of sgem_unet on a CPU (the figures quoted in docs/training.md, pilot C).

    python reports/cpu_pilots/train_speed.py                 # prints one JSON line per setting
    python reports/cpu_pilots/train_speed.py --false-alarms  # the cost of crop_false_alarms, as a ratio
    python reports/cpu_pilots/train_speed.py --precisions    # fp32 / bf16, with and without channels_last

One training step as `sgem train` runs it (`sgem.train.StepRunner`: bf16 autocast
forward, SoftIoU, backward, Adam) on random data in channels_last, 2 threads, 3 warm-up
steps then 12 timed steps; images/s = 12 * batch / seconds. Run with nothing else on the
machine (the figures in docs/training.md: the training runs in the background were
paused for it).
"""
import json
import time

import torch

from sgem.losses import SoftIoULoss
from sgem.models import create_model
from sgem.train import StepRunner


def run(crop: int, bs: int, compile_: bool, steps: int = 12, warm: int = 3, model: str = "sgem_unet") -> dict:
    _, step = _model_and_runner(model, compile_)
    x = torch.randn(bs, 1, crop, crop).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(bs, 1, crop, crop) > 0.99).float()
    acc = torch.zeros(())
    t0 = time.perf_counter()
    for _ in range(warm):
        step(x, y, acc)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y, acc)
    return {"model": model, "crop": crop, "batch": bs, "compile": compile_,
            "images_per_s": round(steps * bs / (time.perf_counter() - t0), 2), "warmup_s": round(warm_s, 1)}


def _model_and_runner(model: str = "sgem_unet", compile_: bool = False, *, dtype: torch.dtype | None = torch.bfloat16,
                      channels_last: bool = True, **runner_kw) -> tuple:
    """A seeded model and the step `sgem train` runs on it (Adam 1e-3; by default bf16
    autocast in channels_last, the `cpu` profile's layout on a CPU with native bf16)."""
    torch.manual_seed(0)
    m = create_model(model)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    return m, StepRunner(torch.compile(m) if compile_ else m, m, SoftIoULoss(), opt, device=torch.device("cpu"),
                         autocast_dtype=dtype, cuda_graph=False, **runner_kw)


def precision_speeds(rounds: int = 3, steps: int = 4, crop: int = 128, bs: int = 8,
                     models: tuple[str, ...] = ("sgem_unet", "unet"), compile_: bool = True) -> list[dict]:
    """Training-step speed in the four CPU layouts (fp32 and bf16 autocast, each with and
    without channels_last), and with ``compile_`` the fp32 + channels_last step under
    ``torch.compile``, per model, alternated ``rounds`` times (``steps`` steps each,
    after one warm-up round) so that a machine's drift reaches all four alike; images/s and
    the ratio to fp32. Which layout ``precision: auto`` picks depends on whether the CPU
    computes bf16 natively (printed with its name): without it, bf16 is emulated."""
    from sgem.device import cpu_name, native_bf16

    out = []
    x0 = torch.randn(bs, 1, crop, crop)
    x_cl = x0.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(bs, 1, crop, crop) > 0.99).float()
    acc = torch.zeros(())
    for model in models:
        layouts = [(dtype, cl, False) for dtype in (None, torch.bfloat16) for cl in (False, True)]
        if compile_:   # the fp32 + channels_last step under torch.compile (compiled in the warm-up round)
            layouts.append((None, True, True))
        setups = {}
        for dtype, cl, comp in layouts:
            name = " + ".join(["bf16" if dtype else "fp32"] + ["channels_last"] * cl + ["torch.compile"] * comp)
            setups[name] = (_model_and_runner(model, comp, dtype=dtype, channels_last=cl)[1], x_cl if cl else x0)
        times = dict.fromkeys(setups, 0.0)
        for r in range(rounds + 1):         # round 0 warms up
            for name, (step, x) in setups.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(x, y, acc)
                if r:
                    times[name] += time.perf_counter() - t0
        for name, t in times.items():
            out.append({"model": model, "layout": name, "crop": crop, "batch": bs, "steps": rounds * steps,
                        "images_per_s": round(rounds * steps * bs / t, 2), "x_fp32": round(times["fp32"] / t, 2),
                        "cpu": cpu_name(), "native_bf16": native_bf16("cpu"), "threads": torch.get_num_threads(),
                        "torch": torch.__version__})
    return out


def false_alarm_overhead(rounds: int = 6, steps: int = 10, crop: int = 128, bs: int = 8) -> dict:
    """The cost of ``crop_false_alarms`` per training step, as a ratio measured in one run:
    the step with the sampler's extra draws and the record of each crop's false alarms
    (``DeviceData.batch`` + ``record_false_alarms`` through the runner's ``on_logits``)
    against the plain step, alternated ``rounds`` times, ``steps`` steps each, on 64 random
    256x256 images with sparse targets (the same batches for both)."""
    from sgem.train import DeviceData

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(256, 256, generator=g).numpy() for _ in range(64)]
    masks = [(torch.rand(256, 256, generator=g) > 0.999).numpy() for _ in range(64)]
    data = DeviceData(images, masks, torch.device("cpu"))
    hook = lambda logits, y: data.record_false_alarms(logits, y, 1)  # noqa: E731
    runners = {p: _model_and_runner(grad_clip=1.0, on_logits=hook if p else None)[1] for p in (0.0, 0.5)}
    acc = torch.zeros(())
    times = {0.0: 0.0, 0.5: 0.0}
    for r in range(rounds + 1):                 # round 0 warms up
        for p, runner in runners.items():
            gen = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            for s in range(steps):
                x, y = data.batch(list(range(s * bs % 64, s * bs % 64 + bs)), crop, gen, "flip", 0.5,
                                  crop_false_alarms=p)
                runner(x.contiguous(memory_format=torch.channels_last), y, acc)
            if r:
                times[p] += time.perf_counter() - t0
    return {"setting": "crop_false_alarms 0.5 vs 0", "crop": crop, "batch": bs, "steps_each": rounds * steps,
            "images_per_s_plain": round(rounds * steps * bs / times[0.0], 2),
            "images_per_s_false_alarms": round(rounds * steps * bs / times[0.5], 2),
            "time_ratio": round(times[0.5] / times[0.0], 4),
            "images_with_a_record": int((data.false_alarms[:, 0] >= 0).sum())}


if __name__ == "__main__":
    import sys

    torch.set_num_threads(2)
    if sys.argv[1:] == ["--false-alarms"]:
        print(json.dumps(false_alarm_overhead()), flush=True)
        raise SystemExit(0)
    if sys.argv[1:] == ["--precisions"]:
        for row in precision_speeds():
            print(json.dumps(row), flush=True)
        raise SystemExit(0)
    for args in [(128, 8, False), (96, 8, False), (64, 8, False), (64, 16, False), (128, 4, False), (128, 8, True)]:
        print(json.dumps(run(*args)), flush=True)
