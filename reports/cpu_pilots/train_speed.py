"""Training-step speed of sgem_unet on a CPU (the figures quoted in docs/training.md, pilot C).

    python reports/cpu_pilots/train_speed.py        # prints one JSON line per setting

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
    torch.manual_seed(0)
    m = create_model(model).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    step = StepRunner(torch.compile(m) if compile_ else m, m, SoftIoULoss(), opt, device=torch.device("cpu"),
                      autocast_dtype=torch.bfloat16, cuda_graph=False)
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


if __name__ == "__main__":
    torch.set_num_threads(2)
    for args in [(128, 8, False), (96, 8, False), (64, 8, False), (64, 16, False), (128, 4, False), (128, 8, True)]:
        print(json.dumps(run(*args)), flush=True)
