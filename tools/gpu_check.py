"""Smoke check and throughput probe for a GPU training run (docs/gpu.md, step 1).

Run from the repository root with the machine's own torch (no install needed):

    python3 -u tools/gpu_check.py DATA_ROOT OUT_JSON [--model sgem_unet] [--batch 8]

What it does, failing fast with one line per problem:

1. the environment (GPU, torch, CUDA, cuDNN, driver) and the dataset's train split;
2. numerics: the same 12 training steps from the same initial weights on the same
   batches, eager and with the CUDA-graph step; their losses must agree (bf16 autocast,
   channels_last) to 0.02, else the graph step is not used;
3. throughput of one training step at the given batch (images/s, median over timed
   steps after warm-up) for eager fp32, eager bf16 + channels_last and the CUDA-graph
   bf16 + channels_last step, batches drawn by the trainer's own sampler;
4. the trainer end to end on 40 images: 1 epoch with the chosen step, stop, resume for a
   second epoch (fused Adam state, checkpoint on a CUDA run), and compact fp16 export.

The JSON result says which step to use (``cuda_graph``) and the images/s it measured;
``tools/gpu_run.sh`` sizes the run from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

# sgem from this checkout, whatever the working directory and PYTHONPATH (the GPU machine has
# it installed nowhere): the repository root is this file's grandparent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _say(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _steps(data, model_name: str, *, batch: int, n: int, precision: str, channels_last: bool, cuda_graph: bool,
           mean: float, std: float, seed: int = 0, timed_from: int = 5, after_step=None,
           compile_mode: str | None = None):
    """Train ``n`` steps from seeded weights; return (losses, per-step seconds, runner).
    ``after_step`` (optional) is called after each synchronised step (a profiler's schedule).
    ``compile_mode`` (an experiment): the forward is ``torch.compile``'d with that mode
    ("default" for torch's default) before the step runner sees it; the first steps then
    hold the compilation, so keep ``timed_from`` past them."""
    from sgem.losses import SoftIoULoss
    from sgem.models import create_model
    from sgem.train import StepRunner, TrainConfig, build_optimizer, epoch_generator

    dev = data.device
    torch.manual_seed(seed)
    model = create_model(model_name).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    cfg = TrainConfig(data_root="x", batch_size=batch)
    opt = build_optimizer(cfg, model.parameters(), fused=True)
    net = model
    if compile_mode:
        net = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    runner = StepRunner(net, model, SoftIoULoss(), opt, device=dev,
                        autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
                        cuda_graph=cuda_graph, log=_say)
    gen = epoch_generator(seed, 0)
    losses, times = [], []
    for s in range(n):
        idx = [(s * batch + i) % len(data) for i in range(batch)]
        _sync(dev)
        t0 = time.perf_counter()
        x, y = data.batch(idx, 256, gen, "flip", pad_value=mean)
        x = (x - mean) / std
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        acc = torch.zeros((), device=dev)
        runner(x, y, acc)
        _sync(dev)
        times.append(time.perf_counter() - t0)
        losses.append(float(acc))
        if after_step is not None:
            after_step()
    return losses, times[timed_from:], runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--model", default="sgem_unet")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--probe-steps", type=int, default=40)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to dry-run this script")
    args = ap.parse_args()
    result: dict = {"ok": False, "cuda_graph": False, "problems": []}
    t_start = time.perf_counter()

    def write() -> None:
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    try:
        dev = torch.device(args.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"no CUDA device visible to torch {torch.__version__} "
                               f"(CUDA build {torch.version.cuda})")
        from sgem.data import image_stats, load_split
        from sgem.profiling import environment_info
        from sgem.train import DeviceData

        torch.backends.cudnn.benchmark = True
        result["environment"] = environment_info(dev)
        _say(f"environment: {json.dumps(result['environment'])}")
        stems, images, masks = load_split(args.data, "train")
        mean, std = image_stats(images)
        data = DeviceData(images, masks, dev)
        result["train_images"] = len(stems)
        _say(f"train split: {len(stems)} images, mean {mean:.4f}, std {std:.4f}")

        # 2. numerics: eager vs graph, same weights, same batches
        kw = dict(batch=args.batch, n=12, precision="bf16", channels_last=True, mean=mean, std=std, timed_from=0)
        le, _, _ = _steps(data, args.model, cuda_graph=False, **kw)
        lg, _, runner = _steps(data, args.model, cuda_graph=True, **kw)
        diff = max(abs(a - b) for a, b in zip(le, lg))
        result["numerics"] = {"eager_losses": le, "graph_losses": lg, "max_abs_diff": diff,
                              "graph_mode": runner.mode, "graph_fallback": runner.fallback}
        _say(f"eager vs graph losses over 12 steps: max |diff| {diff:.2e} (graph mode: {runner.mode})")
        graph_ok = runner.mode == "graph" and diff < 0.02
        if runner.mode == "graph" and not graph_ok:
            result["problems"].append(f"graph step losses differ from eager by {diff:.3g} (> 0.02): not used")

        # 3. throughput
        probes = [("fp32 eager", "fp32", False, False), ("bf16+cl eager", "bf16", True, False)]
        if graph_ok:
            probes.append(("bf16+cl graph", "bf16", True, True))
        result["throughput"] = {}
        for name, precision, cl, graph in probes:
            _, times, _ = _steps(data, args.model, batch=args.batch, n=args.probe_steps, precision=precision,
                                 channels_last=cl, cuda_graph=graph, mean=mean, std=std)
            med = statistics.median(times)
            result["throughput"][name] = {"step_ms_median": med * 1e3, "images_per_s": args.batch / med,
                                          "steps_timed": len(times)}
            _say(f"{name}: {med * 1e3:.2f} ms/step, {args.batch / med:.0f} images/s")
        best = "bf16+cl graph" if graph_ok else "bf16+cl eager"
        result["cuda_graph"] = graph_ok
        result["images_per_s"] = result["throughput"][best]["images_per_s"]

        # 4. the trainer end to end on 40 images, stop and resume, export
        from sgem.train import TrainConfig, export_weights, train

        with tempfile.TemporaryDirectory() as tmp:
            split, held = Path(tmp) / "tiny.txt", Path(tmp) / "tiny_eval.txt"
            n = max(1, min(40, len(stems) - 8))  # 40 images: 5 steps an epoch at batch 8 (warm-up, capture, replay)
            split.write_text("\n".join(stems[:n]) + "\n")
            # evaluated on 8 other training images: the trainer refuses a split that overlaps its training set
            held.write_text("\n".join(stems[n:n + 8]) + "\n")
            cfg = dict(data_root=args.data, out_dir=f"{tmp}/run", model=args.model, epochs=2, batch_size=args.batch,
                       train_split_file=str(split), eval_split_file=str(held), device=str(dev), precision="bf16",
                       channels_last=True, cuda_graph=graph_ok, progress=False, dvclive=False,
                       on_config_change="error")
            s1 = train(TrainConfig(**cfg), stop_after_epochs=1, log=_say)
            s2 = train(TrainConfig(**cfg), log=_say)
            exported = export_weights(f"{tmp}/run/checkpoint.pt", f"{tmp}/w.pt")
            result["trainer"] = {"first_call": s1["epochs_done"], "second_call": s2["epochs_done"],
                                 "complete": s2["complete"], "step_mode": s2["step_mode"],
                                 "last": s2["last"], "export_bytes": exported["bytes"]}
            if not (s1["epochs_done"] == 1 and s2["complete"]):
                result["problems"].append(f"trainer stop/resume: {s1['epochs_done']} then {s2['epochs_done']}")
            _say(f"trainer: 1 epoch, resumed to {s2['epochs_done']}, step {s2['step_mode']}, "
                 f"test iou {s2['last'].get('test/iou')}, export {exported['bytes']} bytes")
        result["ok"] = not result["problems"]
    except Exception as exc:  # noqa: BLE001 (report any failure in one place)
        result["problems"].append(f"{type(exc).__name__}: {exc}")
        result["traceback"] = traceback.format_exc()
        _say(result["traceback"])
    write()
    _say(f"{'OK' if result['ok'] else 'PROBLEMS: ' + '; '.join(result['problems'])} "
         f"(cuda_graph={result['cuda_graph']}, images/s={result.get('images_per_s')})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
