"""Command line: ``sgem <command> ...``. Each command is a thin call into the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_model, list_models

    for name in list_models():
        print(f"{name:12s} {describe_model(name)}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profiling import format_profile, profile_model

    result = profile_model(args.model, size=args.size, channels=args.channels, batch=args.batch,
                           device=args.device, precision=args.precision, warmup=args.warmup,
                           runs=args.runs, timing=not args.no_timing)
    result["command"] = args.command_line
    if args.out:
        from .io import atomic_write_json

        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from .data import DEFAULT_MASK_SUFFIXES, canonical_manifest, compare_with_manifest, validate_dataset

    splits = (dict(s.split("=", 1) if "=" in s else (s, f"{s}.txt") for s in args.split)
              if args.split else None)
    report = validate_dataset(args.root, splits, mask_suffixes=args.mask_suffix or DEFAULT_MASK_SUFFIXES)
    remedy = _write_filtered_splits(report, args) if report.bad_stems and any(report.bad_stems.values()) else []
    manifest = args.manifest or canonical_manifest(args.root)
    canonical = compare_with_manifest(args.root, manifest) if manifest and Path(args.root).is_dir() else None
    if args.json:
        print(json.dumps(report.to_dict() | {"canonical": canonical}, indent=2))
    else:
        print(report.summary())
        if canonical is not None:
            name = Path(manifest).stem
            if canonical["identical"]:
                print(f"  identical to the canonical {name} release ({canonical['checked']} files, {manifest})")
                if canonical["covers"] != "every file of the release":
                    print(f"    (the manifest covers {canonical['covers'][:170]})")
            else:
                print(f"  differs from the canonical {name} release ({manifest}):")
                for kind in ("differing", "missing", "extra"):
                    files = canonical[kind]
                    if files:  # as many names as fit on one short line (--json lists every one)
                        head, shown = f"    {len(files)} {kind}: ", []
                        for f in files:
                            if len(head) + len(", ".join(shown + [f])) > 170:
                                break
                            shown.append(f)
                        rest = f" and {len(files) - len(shown)} more" if len(shown) < len(files) else ""
                        print(head + ", ".join(shown) + rest)
        for line in remedy:
            print(line)
    return 0 if report.ok else 1


def _write_filtered_splits(report, args: argparse.Namespace) -> list[str]:
    """Split lists without the stems whose files have problems, written to the current
    folder, and the commands that use them (a remedy that works as printed)."""
    from .io import atomic_write_text

    import os

    def short(p: Path) -> str:  # what to type from here: the shorter of the relative and absolute forms
        rel = os.path.relpath(p)
        return rel if len(rel) < len(str(p.resolve())) else str(p.resolve())

    lines = ["  remedy: fix the files named above, or leave those stems out with the filtered split lists:"]
    root = Path(args.root)
    for split, bad in report.bad_stems.items():
        if not bad:
            continue
        keep = [s.stem for s in report.splits[split] if s.stem not in set(bad)]
        out = Path.cwd() / f"{root.resolve().name}.{split}.filtered.txt"
        atomic_write_text(out, "\n".join(keep) + "\n")
        lines.append(f"    {split}: {short(out)} ({len(keep)} stems, {len(bad)} left out: {', '.join(bad[:5])}"
                     f"{' ...' if len(bad) > 5 else ''})")
        flag = "--split-file" if split != "train" else "--train-split-file"
        cmd = "evaluate --checkpoint CKPT" if split != "train" else "train"
        lines.append(f"    e.g. sgem {cmd} --data {short(root)} {flag} {short(out)}" +
                     (f" --split {split}" if split not in ("train", "test") else ""))
    return lines


def _cmd_make_synthetic(args: argparse.Namespace) -> int:
    from .synthetic import make_synthetic

    summary = make_synthetic(args.out, n=args.n, size=args.size, seed=args.seed,
                             train_fraction=args.train_fraction)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg: dict = {}
    if args.params:
        cfg.update(_load_params(args.params, args.params_key))
    for name, value in vars(args).items():
        if name.startswith("cfg_") and value is not None:
            cfg[name[4:]] = value
    if args.model_kwargs is not None:
        cfg["model_kwargs"] = json.loads(args.model_kwargs)
    config = TrainConfig.from_dict(cfg)
    on_epoch_end = None
    if not config.progress:  # one flushed line per epoch: a log file or a killed command still shows it
        import time

        t0 = time.perf_counter()

        def on_epoch_end(epoch: int, row: dict) -> None:
            line = {"epoch": epoch, "of": config.epochs, "elapsed_s": round(time.perf_counter() - t0, 1),
                    **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items() if k != "epoch"}}
            print(json.dumps(line), flush=True)

    try:
        with _sigterm_raises():
            summary = train(config, stop_after_epochs=args.stop_after_epochs, on_epoch_end=on_epoch_end,
                            stop_after_seconds=None if args.stop_after_minutes is None else 60 * args.stop_after_minutes)
    except (KeyboardInterrupt, _Stop) as exc:
        return _say_what_is_kept(config.out_dir, exc)
    print(json.dumps(summary, indent=2))
    return 0


class _Stop(BaseException):
    """SIGTERM while training, turned into an exception so that the run unwinds (its lock
    released) as after Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises():
    """Within: SIGTERM (``kill``) raises :class:`_Stop` (main thread only; elsewhere a
    signal handler cannot be set), the previous handler restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):  # noqa: ARG001
        raise _Stop
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say_what_is_kept(out_dir: str, exc: BaseException) -> int:
    """Ctrl-C or SIGTERM during training: one line saying what is kept (the last checkpoint,
    written atomically, so an interrupted write leaves the previous one) and how to resume,
    instead of a traceback; returns the exit status (130, or 143 for SIGTERM). Checkpoints
    are only written at their epochs, so the epochs since the last one are trained again."""
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint

    ckpt = Path(out_dir) / CHECKPOINT_NAME
    try:
        kept = f"its last checkpoint, {ckpt}, is at epoch {load_checkpoint(ckpt)['epoch']}"
    except (OSError, ValueError, KeyError):
        kept = f"no checkpoint in {out_dir} yet"
    interrupted = isinstance(exc, KeyboardInterrupt)
    what = "interrupted" if interrupted else "stopped by SIGTERM"
    print(f"sgem train: {what}; {kept}; run the same command again to resume from it", file=sys.stderr)
    return 130 if interrupted else 143


def _load_params(path: str, key: str | None) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for part in (key.split(".") if key else []):
        if not isinstance(data, dict) or part not in data:
            raise ValueError(f"{path}: key '{key}' not found")
        data = data[part]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: '{key}' is not a mapping of training settings")
    return data


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, evaluate_pred_dir

    if args.checkpoint and args.pred_dir:
        raise ValueError("give one of --checkpoint CKPT or --pred-dir DIR, not both")
    kwargs = dict(split=args.split, split_file=args.split_file, out=args.out, curves=not args.no_curves,
                  threshold=args.threshold)
    if not args.pred_dir:
        checkpoint = args.checkpoint or _shipped_weights()
        result = evaluate_checkpoint(checkpoint, args.data, device=args.device, save_pred=args.save_pred,
                                     precision=args.precision, backend=args.backend, **kwargs)
    else:
        result = evaluate_pred_dir(args.pred_dir, args.data, **kwargs)
    keys = ("iou", "niou", "precision", "recall", "f1", "pd", "fa", "fa_legacy")
    print(json.dumps({k: result[k] for k in keys} | {"images": result["counts"]["images"]}, indent=2))
    return 0


def _shipped_weights() -> str:
    from .evaluate import default_checkpoint

    path = default_checkpoint()
    print(f"using the shipped weights {path} (sgem/weights/MODEL_CARD.md); --checkpoint to use others", flush=True)
    return str(path)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_paths

    checkpoint = args.checkpoint or _shipped_weights()
    written = predict_paths(checkpoint, args.paths, args.out, device=args.device, threshold=args.threshold,
                            precision=args.precision, tile=args.tile, backend=args.backend)
    print(f"wrote masks, probability maps and overlays for {len(written)} image(s) to {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, to_markdown, write_report

    settings = {"models": args.models or None, "device": args.device, "batches": args.batch,
                "precisions": args.precision, "modes": args.mode, "size": args.size, "channels": args.channels,
                "runs": args.runs, "warmup": args.warmup, "warmup_s": args.warmup_s, "budget_s": args.budget_s}
    if args.params:
        given = _load_params(args.params, args.params_key)
        unknown = sorted(set(given) - set(settings))
        if unknown:
            raise ValueError(f"{args.params}: unknown bench setting(s) {unknown}; known: {sorted(settings)}")
        settings.update(given)
    models = settings.pop("models")
    report = bench(models, **settings)
    paths = write_report(report, args.out_dir, command=args.command_line, name=args.name)
    print(to_markdown(report))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _parity_images(args: argparse.Namespace, multiple: int) -> tuple[list, str]:
    """Test images for the ONNX parity check (--data), else seeded synthetic ones."""
    import numpy as np

    if args.data:
        from .data import load_split

        _, images, _ = load_split(args.data, args.split)
        usable = [im for im in images if im.shape[0] % multiple == 0 and im.shape[1] % multiple == 0]
        if not usable:
            raise ValueError(f"{args.data}: no '{args.split}' image has sides that are multiples of {multiple}")
        return usable[: args.parity_images], f"{len(usable[: args.parity_images])} '{args.split}' images of {args.data}"
    rng = np.random.default_rng(0)
    images = []
    for _ in range(args.parity_images):
        im = (rng.random((256, 256)) * 0.3 + 0.3).astype(np.float32)
        y, x = rng.integers(20, 236, 2)
        im[y:y + 3, x:x + 3] = 1.0   # a small bright target, so that masks are not all background
        images.append(im)
    return images, f"{len(images)} synthetic 256x256 images (seed 0)"


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from .checkpoint import model_from_checkpoint
    from .deploy import export_onnx, sha256_file
    from .models import create_model

    if bool(args.checkpoint) == bool(args.model):
        raise ValueError("give --checkpoint CKPT (trained weights) or --model NAME (untrained, for testing a "
                         "deployment), not both")
    if args.checkpoint:
        model, state = model_from_checkpoint(args.checkpoint)
        name, kwargs = state["config"]["model"], state["config"].get("model_kwargs", {})
        norm = {"mean": state["normalization"]["mean"], "std": state["normalization"]["std"]}
        source, sha = str(args.checkpoint), sha256_file(args.checkpoint)
    else:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
        model, name = create_model(args.model, **kwargs).eval(), args.model
        norm, source, sha = {"mean": 0.5, "std": 0.25}, "untrained (random weights)", ""
    images, where = _parity_images(args, int(getattr(model, "size_multiple", 16)))
    report = export_onnx(model, args.out, name=name, model_kwargs=kwargs, normalization=norm, images=images,
                         source=source, source_sha256=sha, atol=args.atol)
    print(json.dumps(report | {"parity_images": where}, indent=2))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .data import load_split
    from .deploy import quantize_int8

    stems, images, _ = load_split(args.data, args.split)
    if args.split == "test":
        raise ValueError("calibrate on training images only (--split train), never on the test split")
    import numpy as np

    order = np.random.default_rng(args.seed).permutation(len(stems))[: args.calibration]
    chosen = sorted(int(i) for i in order)
    note = {"data": str(args.data), "split": args.split, "count": len(chosen), "seed": args.seed,
            "stems": [stems[i] for i in chosen]}
    result = quantize_int8(args.onnx, args.out, [images[i] for i in chosen], calibration_note=note,
                           activations=args.activations)
    print(json.dumps({k: v for k, v in result.items() if k != "calibration"} |
                     {"calibration": {k: v for k, v in note.items() if k != "stems"}}, indent=2))
    return 0


def _cmd_bench_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy_bench, deploy_markdown
    from .io import atomic_write_json, atomic_write_text

    report = deploy_bench(args.checkpoint, args.onnx, args.onnx_int8, data=args.data, batches=args.batch,
                          warmup_s=args.warmup_s, budget_s=args.budget_s, compile=args.compile,
                          openvino=args.openvino, log=lambda line: print(f"sgem bench-deploy: {line}",
                                                                         file=sys.stderr, flush=True))
    report["command"] = args.command_line
    md = f"Command: `{args.command_line}`\n\n" + deploy_markdown(report)
    atomic_write_json(f"{args.out}.json", report)
    atomic_write_text(f"{args.out}.md", md)
    print(md)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .report import ablation, write_ablation

    groups: dict[str, list[str]] = {}
    for run in args.runs:
        p = Path(run)
        state = load_checkpoint(p / "checkpoint.pt" if p.is_dir() else p)
        groups.setdefault(state["config"]["model"], []).append(run)
    order = sorted(groups, key=lambda n: (n != "sgem_unet", n))
    report = ablation({n: groups[n] for n in order}, split=args.split)
    report["command"] = args.command_line
    print(write_ablation(report, args.out, f"Command: `{args.command_line}`\n\nLast-epoch {args.split} metrics of "
                                           f"each run (the protocol's own evaluation, no selection)."))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        return _cmd_export_onnx(args)
    from .checkpoint import export_weights

    if not args.checkpoint:
        raise ValueError("--checkpoint is required for --format torch")
    result = export_weights(args.checkpoint, args.out, half=not args.fp32)
    if args.part_mb is not None:
        from .io import split_into_parts

        result["parts_manifest"] = str(split_into_parts(args.out, int(args.part_mb * 2**20)))
    print(json.dumps(result, indent=2))
    return 0


def _cmd_import_checkpoint(args: argparse.Namespace) -> int:
    from .importers import import_checkpoint

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    summary = import_checkpoint(args.src, args.model, mean=args.mean, std=args.std, out=args.out,
                                model_kwargs=kwargs, toolbox=args.toolbox)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from .io import split_into_parts

    if not args.part_mb > 0:
        raise ValueError(f"--part-mb must be > 0, got {args.part_mb}")
    if not Path(args.file).is_file():
        raise ValueError(f"{args.file}: no such file to split")
    manifest = split_into_parts(args.file, int(args.part_mb * 2**20))
    print(json.dumps({"file": args.file, "parts_manifest": str(manifest),
                      "parts": len(json.loads(manifest.read_text())["parts"])}, indent=2))
    return 0


def _cmd_join(args: argparse.Namespace) -> int:
    from .io import join_parts

    out = join_parts(args.manifest, args.out)
    print(f"joined and verified {out}")
    return 0


def _add_train_options(p: argparse.ArgumentParser) -> None:
    import dataclasses

    from .train import TrainConfig

    p.add_argument("--params", help="YAML file with training settings (see params.yaml)")
    p.add_argument("--params-key", default=None, help="dotted key of the settings inside --params (e.g. train)")
    p.add_argument("--model-kwargs", default=None, help="JSON object of model constructor arguments")
    p.add_argument("--stop-after-epochs", type=int, default=None,
                   help="return after N epochs of this call (checkpointed); rerun to continue")
    p.add_argument("--stop-after-minutes", type=float, default=None,
                   help="return before another epoch would overrun M minutes of this call (checkpointed)")
    aliases = {"data_root": ["--data"], "out_dir": ["--out"]}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_kwargs":
            continue
        flags = [f"--{f.name.replace('_', '-')}"] + aliases.get(f.name, [])
        default = f.default
        if isinstance(default, bool):
            p.add_argument(*flags, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {default})")
        else:
            typ = int if isinstance(default, int) else float if isinstance(default, float) else str
            p.add_argument(*flags, dest=f"cfg_{f.name}", type=typ, default=None, help=f"(default {default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgem", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("profile", help="params, MACs, latency and FPS of a model",
                       description="Params, module-level MACs (paper convention), full MACs/FLOPs, "
                                   "forward latency (median, p90) and FPS, with device and versions.")
    p.add_argument("model", help="registered model name (see `sgem models`)")
    p.add_argument("--size", type=int, default=256, help="input height and width (default 256)")
    p.add_argument("--channels", type=int, default=None, help="input channels (default: the model's)")
    p.add_argument("--batch", type=int, default=1, help="batch size for timing (MACs are per image)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--no-timing", action="store_true", help="count params and MACs only")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--out", default=None, help="also write the JSON result to this file (atomically)")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser("check-data", help="validate a dataset and summarise it",
                       description="Check ROOT/images, ROOT/masks and the split lists; print a summary "
                                   "or every problem (exit 1).")
    p.add_argument("root")
    p.add_argument("--split", action="append", default=None,
                   help="NAME or NAME=FILE (repeatable; default: train=train.txt and test=test.txt)")
    p.add_argument("--mask-suffix", action="append", default=None,
                   help="mask file suffix to try after the stem (repeatable; default '', _pixels0, _mask)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--manifest", default=None,
                   help="a sha256 manifest to compare with (default: the shipped one named like the folder, "
                        "e.g. sgem/manifests/NUDT-SIRST.sha256)")
    p.set_defaults(func=_cmd_check_data)

    p = sub.add_parser("make-synthetic", help="write a NUDT-like synthetic dataset")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-fraction", type=float, default=0.5)
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("train", help="train or resume a model (resumes from OUT/checkpoint.pt)")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="score a checkpoint, or saved predictions of any method")
    p.add_argument("--checkpoint", default=None, help="default: the shipped weights (sgem/weights/MODEL_CARD.md)")
    p.add_argument("--pred-dir", default=None, help="PNG maps named by stem (8-bit /255, 16-bit /65535)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="torch",
                   help="onnxruntime or openvino: --checkpoint is an .onnx file from `sgem export --format onnx` "
                        "(the [deploy] extra); --precision bf16/auto then asks OpenVINO for bf16")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="inference precision (default fp32, the reference; auto: bf16 + channels_last where "
                        "the device computes bf16 natively, else fp32, in channels_last on a CPU)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="test")
    p.add_argument("--split-file", default=None)
    p.add_argument("--out", default=None, help="write all metrics and curves as JSON")
    p.add_argument("--save-pred", default=None, help="write 16-bit probability maps here")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--no-curves", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("bench", help="speed of every registered model, interleaved, in one process",
                       description="Writes OUT_DIR/bench_<device>.json and .md.")
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--precision", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: fp32 (and bf16 on CUDA)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--runs", type=int, default=30, help="timed rounds at most (each model once per round)")
    p.add_argument("--mode", nargs="+", default=None,
                   help="precision with optional +cl (channels_last) and +graph (CUDA graph replay), e.g. "
                        "fp32 bf16+cl bf16+cl+graph (overrides --precision)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs per model, at least")
    p.add_argument("--warmup-s", type=float, default=0.0,
                   help="warm-up seconds per setting, at least (e.g. 2 on a GPU, whose clocks ramp up)")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="seconds of timed rounds per (batch, precision) setting, at least 3 rounds (default 120)")
    p.add_argument("--out-dir", default="reports")
    p.add_argument("--name", default=None, help="file stem (default bench_<device>)")
    p.add_argument("--params", default=None, help="YAML file whose settings override the options")
    p.add_argument("--params-key", default=None, help="dotted key of the settings inside --params (e.g. bench)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="compact inference weights (fp16), or an ONNX file with a parity check")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["torch", "onnx"], default="torch",
                   help="torch: compact sgem checkpoint (default); onnx: dynamic batch/height/width, checked "
                        "against PyTorch fp32")
    p.add_argument("--model", default=None, help="onnx only: export an untrained registered model instead")
    p.add_argument("--model-kwargs", default=None, help="onnx with --model: JSON model arguments")
    p.add_argument("--data", default=None, help="onnx: dataset whose images the parity check uses")
    p.add_argument("--split", default="test", help="onnx: split of --data for the parity check (default test)")
    p.add_argument("--parity-images", type=int, default=8, help="onnx: images in the parity check (default 8)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="onnx: largest allowed |logit difference| to PyTorch fp32 (default 1e-3)")
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights")
    p.add_argument("--part-mb", type=float, default=None,
                   help="also split the file into parts of at most this many MiB, with a sha256 manifest "
                        "(OUT.parts.json); `sgem join` rebuilds it")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("ablation", help="runs of several models (and seeds) side by side, with the seed spread")
    p.add_argument("runs", nargs="+", help="run folders (or checkpoints) of complete runs, any models")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="reports/ablation", help="file stem for .json and .md")
    p.set_defaults(func=_cmd_ablation)

    p = sub.add_parser("bench-deploy", help="every CPU inference path of a trained model: FPS and accuracy",
                       description="torch fp32/bf16 (+channels_last), ONNX Runtime fp32 and int8, timed interleaved "
                                   "and scored on the test split, in one table.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--onnx", required=True, help="its fp32 ONNX export")
    p.add_argument("--onnx-int8", default=None, help="its int8 ONNX (sgem quantize)")
    p.add_argument("--data", default=None, help="dataset whose test split gives the accuracy columns")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--budget-s", type=float, default=10.0, help="seconds of timed rounds per batch size")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile of the bf16 + channels_last path (compilation not timed)")
    p.add_argument("--openvino", action="store_true",
                   help="add OpenVINO rows (fp32, and bf16 where the CPU computes it natively) on the ONNX file")
    p.add_argument("--out", default="reports/bench_cpu_deploy", help="file stem for .json and .md")
    p.set_defaults(func=_cmd_bench_deploy)

    p = sub.add_parser("quantize", help="int8 ONNX (static, calibrated on training images only)")
    p.add_argument("--onnx", required=True, help="an fp32 file from `sgem export --format onnx`")
    p.add_argument("--out", required=True)
    p.add_argument("--data", required=True, help="dataset whose training images calibrate the quantization")
    p.add_argument("--split", default="train", help="calibration split (default train; test is refused)")
    p.add_argument("--calibration", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--seed", type=int, default=0, help="which images (seeded draw; recorded)")
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8",
                   help="activation type (weights are int8 per channel): uint8 (default, U8S8: ONNX Runtime's "
                        "fast x86 kernels) or int8 (S8S8)")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("import-checkpoint", help="convert another toolbox's checkpoint into an sgem checkpoint",
                       description="BasicIRSTD / LESPS / DNANet-repository weights of a model sgem implements, "
                                   "renamed and checked tensor by tensor (sgem/importers.py lists the rules).")
    p.add_argument("src")
    p.add_argument("--model", required=True, help="sgem's name of the architecture: acm, alcnet, dnanet or uiunet")
    p.add_argument("--mean", type=float, required=True, help="training normalisation mean, 0-255 grey units")
    p.add_argument("--std", type=float, required=True, help="training normalisation std, 0-255 grey units")
    p.add_argument("--out", required=True)
    p.add_argument("--model-kwargs", default=None, help="JSON object of sgem model arguments (default: none)")
    p.add_argument("--toolbox", default="", help="where the weights come from (recorded)")
    p.set_defaults(func=_cmd_import_checkpoint)

    p = sub.add_parser("split", help="split any file (a full training checkpoint, say) into verified parts; "
                                     "`sgem join` rebuilds it")
    p.add_argument("file")
    p.add_argument("--part-mb", type=float, required=True, help="largest part, in MiB")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("join", help="rebuild a file from its parts and verify it (see export --part-mb)")
    p.add_argument("manifest", help="the .parts.json manifest (parts beside it)")
    p.add_argument("--out", default=None, help="default: the original name, beside the manifest")
    p.set_defaults(func=_cmd_join)

    p = sub.add_parser("predict", help="masks, probability maps and overlays for images or folders")
    p.add_argument("--checkpoint", default=None, help="default: the shipped weights (sgem/weights/MODEL_CARD.md)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", default="predictions", help="output folder (default ./predictions)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "openvino"], default="torch",
                   help="onnxruntime or openvino: --checkpoint is an .onnx file from `sgem export --format onnx` "
                        "(the [deploy] extra); --precision bf16/auto then asks OpenVINO for bf16")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                   help="default auto: bf16 + channels_last where the device computes bf16 natively, "
                        "else fp32 (in channels_last on a CPU)")
    p.add_argument("--tile", type=int, default=1024,
                   help="images larger than this on a side are predicted in overlapping tiles of this size, "
                        "so memory stays bounded (default 1024; 0: never)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(["sgem", *argv])
    try:
        from .data import resolve_dataset

        for attr in ("data", "root", "cfg_data_root"):   # a dataset by path or by name (data/<NAME>)
            if isinstance(getattr(args, attr, None), str):
                setattr(args, attr, str(resolve_dataset(getattr(args, attr))))
        return args.func(args)
    except KeyboardInterrupt:   # Ctrl-C: one line, not a traceback (train says what it kept itself)
        print(f"sgem {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, RuntimeError, TypeError, FloatingPointError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(msg):
            msg = f"{exc.filename}: {exc.strerror or msg}"
        print(f"sgem {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
