"""Deployment outside PyTorch: ONNX export with a parity check, an ONNX Runtime backend
for predict/evaluate, and int8 static quantization.

* :func:`export_onnx`: any registered model (a checkpoint's weights) to ONNX with dynamic
  batch, height and width (multiples of the model's ``size_multiple``), opset 17, through
  PyTorch's TorchScript-based exporter (it needs only ``onnx``; the newer exporter needs
  ``onnxscript`` and handles the models' shape arithmetic no better). The model name,
  its arguments, the normalisation and the source checkpoint's sha256 go into the file's
  metadata. The export then runs a **parity check**: the file in ONNX Runtime against
  PyTorch fp32 on the given images (test images where a dataset is given), max absolute
  logit difference and mask agreement (logit > 0); above ``atol`` or below
  ``min_agreement`` the export fails and the file is deleted.
* :class:`OnnxModel`: an ONNX file behind a ``model(x) -> logits`` call, so that
  :func:`sgem.evaluate.predict_probs` and everything above it (``sgem predict``,
  ``sgem evaluate``) run on ONNX Runtime with the same pre- and post-processing.
* :func:`quantize_int8`: static int8 quantization (QDQ, per-channel int8 weights, uint8
  activations by default, MinMax
  calibration) calibrated on **training** images only; the calibration set (split,
  stems, count) is recorded in the quantized file's metadata.

Needs the ``[deploy]`` extra (onnx, onnxruntime); without it the commands say so.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ._optional import require

OPSET = 17
META_PREFIX = "sgem."


def _ort():
    return require("onnxruntime", "the ONNX Runtime backend")


def export_onnx(model: nn.Module, out: str | Path, *, name: str, model_kwargs: dict[str, Any],
                normalization: dict[str, float], images: Sequence[np.ndarray], source: str = "",
                source_sha256: str = "", atol: float = 1e-3, min_agreement: float = 0.9999) -> dict[str, Any]:
    """Export ``model`` (eval mode, fp32) to ``out`` and check it against PyTorch on ``images``
    (grey, [0, 1]; each a multiple of the model's size). Returns the parity report."""
    onnx = require("onnx", "ONNX export")
    _ort()
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ValueError(f"{out}: is a folder; --out must be the .onnx file to write")
    model = model.float().cpu().eval()
    multiple = int(getattr(model, "size_multiple", 16))
    x = torch.zeros(1, int(getattr(model, "in_channels", 1)), 4 * multiple, 4 * multiple)
    dyn = {0: "batch", 2: "height", 3: "width"}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation note and the shape checks traced as constants
            torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": dyn, "logits": dyn})
        proto = onnx.load(tmp)
        meta = {"model": name, "model_kwargs": json.dumps(model_kwargs, sort_keys=True),
                "normalization": json.dumps(normalization, sort_keys=True), "size_multiple": str(multiple),
                "source": source, "source_sha256": source_sha256, "precision": "fp32",
                "exporter": f"torch {torch.__version__} (TorchScript-based), opset {OPSET}"}
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_PREFIX + k, v
        onnx.save(proto, tmp)
        report = parity(model, OnnxModel(tmp), images, normalization)
        report.update({"atol": atol, "min_agreement": min_agreement, "file": str(out),
                       "bytes": Path(tmp).stat().st_size})
        if not (report["max_abs_logit_diff"] <= atol and report["mask_agreement"] >= min_agreement):
            raise ValueError(f"{out}: ONNX parity check failed: max |logit difference| "
                             f"{report['max_abs_logit_diff']:.3g} (tolerance {atol}), mask agreement "
                             f"{report['mask_agreement']:.6f} (required {min_agreement}); nothing written")
        os.replace(tmp, out)
        return report
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@torch.inference_mode()
def parity(reference: nn.Module, candidate: Any, images: Sequence[np.ndarray], normalization: dict[str, float]
           ) -> dict[str, Any]:
    """Logits of ``candidate`` against ``reference`` on the same normalised images."""
    if not images:
        raise ValueError("the parity check needs at least one image")
    worst, agree, total = 0.0, 0, 0
    for im in images:
        x = (torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None] - normalization["mean"]) \
            / normalization["std"]
        a = reference(x).float()
        b = candidate(x).float()
        worst = max(worst, float((a - b).abs().max()))
        agree += int(((a > 0) == (b > 0)).sum())
        total += a.numel()
    return {"images": len(images), "max_abs_logit_diff": worst, "mask_agreement": agree / total}


class OnnxModel:
    """An ONNX file (exported by :func:`export_onnx`) called like an sgem model:
    ``model(x)`` takes a normalised (B, C, H, W) float tensor and returns logits."""

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX file not found")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ValueError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        self.meta = {k[len(META_PREFIX):]: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                     if k.startswith(META_PREFIX)}
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path}: expected one 4-D image input, found {[i.shape for i in inputs]}")
        self.input_name = inputs[0].name
        ch = inputs[0].shape[1]
        self.in_channels = ch if isinstance(ch, int) else 1
        self.size_multiple = int(self.meta.get("size_multiple", 16))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.path}: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"{self.path}: height and width must be multiples of {self.size_multiple}, got {h}x{w}")
        arr = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])

    # the few nn.Module calls the callers make
    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OnnxModel":
        return self

    def normalization(self) -> dict[str, float]:
        if "normalization" not in self.meta:
            raise ValueError(f"{self.path}: no sgem normalisation in the file's metadata (not exported by sgem)")
        return json.loads(self.meta["normalization"])


class OpenVinoModel:
    """An exported ONNX file run by OpenVINO on the CPU, called like an sgem model.

    ``precision`` 'bf16' asks OpenVINO for bf16 inference (its ``INFERENCE_PRECISION_HINT``;
    on a CPU with AMX or AVX512-BF16 it runs the convolutions in bf16), 'fp32' for f32.
    One compiled model per input shape (compiled on first use), so that a fixed size runs
    as a static graph."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", threads: int = 0) -> None:
        ov = require("openvino", "the OpenVINO backend")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"OpenVINO precision must be 'fp32' or 'bf16', got {precision!r}")
        self.path = Path(path)
        self.onnx = OnnxModel(path)   # checks the file, reads sgem's metadata
        self.meta, self.in_channels, self.size_multiple = self.onnx.meta, self.onnx.in_channels, \
            self.onnx.size_multiple
        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                       "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.precision = precision
        self._compiled: dict[tuple[int, ...], Any] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if x.ndim != 4 or x.shape[1] != self.in_channels or h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"{self.path}: expected input (B, {self.in_channels}, H, W) with H and W multiples of "
                             f"{self.size_multiple}, got {tuple(x.shape)}")
        shape = tuple(x.shape)
        if shape not in self._compiled:
            model = self.core.read_model(str(self.path))
            model.reshape(list(shape))
            self._compiled[shape] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        req = self._compiled[shape]
        req.infer({0: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(req.get_output_tensor(0).data.copy())

    def eval(self) -> "OpenVinoModel":
        return self

    def to(self, *args: Any, **kwargs: Any) -> "OpenVinoModel":
        return self

    def normalization(self) -> dict[str, float]:
        return self.onnx.normalization()


ACTIVATION_TYPES = ("uint8", "int8")


def quantize_int8(src: str | Path, out: str | Path, calibration: Sequence[np.ndarray], *,
                  calibration_note: dict[str, Any], activations: str = "uint8") -> dict[str, Any]:
    """Static int8 quantization of an exported fp32 file, calibrated on ``calibration``
    (grey training images in [0, 1]); ``calibration_note`` (split, stems, count) and the
    activation type are recorded in the output's metadata. Weights are signed int8 per
    channel; ``activations`` is ``uint8`` (asymmetric, U8S8: what ONNX Runtime's x86
    kernels compute fastest; on a Xeon with AVX512-VNNI sgem_unet ran at 1.53x ONNX Runtime
    fp32's FPS this way and at 1.0x with ``int8`` activations,
    reports/bench_cpu_deploy_nobf16*.md) or
    ``int8`` (S8S8, ONNX Runtime's own default, the choice before this option). On an x86 CPU
    without VNNI, U8S8 products can saturate: check the accuracy there (`sgem evaluate
    --backend onnxruntime`)."""
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {activations!r}")
    onnx = require("onnx", "int8 quantization")
    q = require("onnxruntime.quantization", "int8 quantization")
    src_model = OnnxModel(src)
    norm = src_model.normalization()

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            im = next(self.items, None)
            if im is None:
                return None
            x = (np.asarray(im, np.float32)[None, None] - norm["mean"]) / norm["std"]
            return {src_model.input_name: x.astype(np.float32)}

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        q.quantize_static(str(pre), str(Path(tmp) / "q.onnx"), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, weight_type=q.QuantType.QInt8,
                          activation_type=q.QuantType.QUInt8 if activations == "uint8" else q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
        proto = onnx.load(str(Path(tmp) / "q.onnx"))
        del proto.metadata_props[:]
        for k, v in {**src_model.meta, "precision": "int8", "activations": activations,
                     "calibration": json.dumps(calibration_note, sort_keys=True)}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = META_PREFIX + k, v
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out))
    return {"out": str(out), "bytes": out.stat().st_size, "activations": activations,
            "calibration": calibration_note}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- one table

def _torch_runner(model: nn.Module, precision: str, channels_last: bool, compile: bool = False):
    import contextlib
    import copy

    m = copy.deepcopy(model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if compile:
        m = torch.compile(m)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            return m(x).float()
    return run


def deploy_bench(checkpoint: str | Path, onnx_fp32: str | Path, onnx_int8: str | Path | None, *,
                 data: str | Path | None, batches: Sequence[int] = (1, 8), size: int = 256,
                 warmup_s: float = 2.0, budget_s: float = 10.0, min_runs: int = 5,
                 compile: bool = False, openvino: bool = False,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every CPU inference path of one trained model in one table: FPS at each batch
    (forward only, random input resident in memory, the paths timed interleaved in
    rounds after a time-based warm-up, median latency) and, where ``data`` is given, the
    test split's IoU, nIoU, F1, Pd and Fa through that same path. ``compile`` adds
    ``torch.compile`` of the bf16 + channels_last path (its compilation happens during
    the warm-up and is not in the FPS). ``log`` receives one line per phase (each batch
    size's timing, each path's accuracy pass with its duration): on a CPU where a path is
    slow (bf16 emulated without native bf16) the whole run takes tens of minutes."""
    import time

    from .checkpoint import model_from_checkpoint
    from .device import native_bf16
    from .evaluate import evaluate_arrays, predict_probs
    from .profiling import environment_info, latency_stats

    model, state = model_from_checkpoint(checkpoint)
    norm = state["normalization"]
    native = native_bf16("cpu")
    paths: dict[str, Any] = {
        "torch fp32 (eager, the reference)": _torch_runner(model, "fp32", False),
        "torch fp32 + channels_last": _torch_runner(model, "fp32", True),
        "torch bf16 autocast": _torch_runner(model, "bf16", False),
        "torch bf16 autocast + channels_last": _torch_runner(model, "bf16", True),
        "onnxruntime fp32": OnnxModel(onnx_fp32),
    }
    if compile:
        paths["torch bf16 autocast + channels_last + torch.compile"] = _torch_runner(model, "bf16", True, True)
    if onnx_int8 is not None:
        paths["onnxruntime int8 (static, QDQ)"] = OnnxModel(onnx_int8)
    if openvino:
        paths["openvino fp32"] = OpenVinoModel(onnx_fp32, precision="fp32")
        if native:
            paths["openvino bf16"] = OpenVinoModel(onnx_fp32, precision="bf16")
    rows: dict[str, dict[str, Any]] = {name: {"path": name} for name in paths}
    say = log or (lambda line: None)
    if not native:
        say("this CPU has no native bf16 (AMX-BF16 or AVX512-BF16): the torch bf16 paths are emulated and slow")
    for batch in batches:
        say(f"timing {len(paths)} paths at batch {batch} ({warmup_s} s of warm-up, then at least {budget_s} s)")
        x = (torch.rand(batch, 1, size, size) - norm["mean"]) / norm["std"]
        times: dict[str, list[float]] = {n: [] for n in paths}
        for f in paths.values():  # compilation and first-call costs stay out of the warm-up's clock
            f(x)
        start = time.perf_counter()
        while time.perf_counter() - start < warmup_s:
            for f in paths.values():
                f(x)
        start = time.perf_counter()
        rounds = 0
        while rounds < min_runs or time.perf_counter() - start < budget_s:
            for n, f in paths.items():
                t0 = time.perf_counter()
                f(x)
                times[n].append((time.perf_counter() - t0) * 1e3)
            rounds += 1
        for n in paths:
            st = latency_stats(times[n])
            rows[n][f"b{batch}_latency_ms"] = st["median"]
            rows[n][f"b{batch}_fps"] = batch / (st["median"] / 1e3)
            rows[n][f"b{batch}_runs"] = len(times[n])
    ref = rows["torch fp32 (eager, the reference)"]
    for r in rows.values():
        for batch in batches:
            r[f"b{batch}_speedup"] = r[f"b{batch}_fps"] / ref[f"b{batch}_fps"]
    if data is not None:
        from .data import load_split

        _, images, masks = load_split(data, "test")
        for k, (n, f) in enumerate(paths.items(), 1):
            t0 = time.perf_counter()
            probs = predict_probs(f if isinstance(f, (OnnxModel, OpenVinoModel)) else _Callable(f), images,
                                  mean=norm["mean"], std=norm["std"])
            m = evaluate_arrays(probs, masks, curves=False)
            rows[n].update({key: m[key] for key in ("iou", "niou", "f1", "pd", "fa")})
            say(f"accuracy {k}/{len(paths)}, {n}: IoU {100 * m['iou']:.2f} on {len(images)} test images "
                f"({time.perf_counter() - t0:.0f} s)")
        for r in rows.values():
            r["iou_minus_reference"] = r["iou"] - ref["iou"]
    env = environment_info("cpu") | {"native_bf16": native, "onnxruntime": _ort().__version__}
    if openvino:
        env["openvino"] = require("openvino", "the OpenVINO backend").__version__
    return {"checkpoint": str(checkpoint), "onnx_fp32": str(onnx_fp32), "onnx_int8": str(onnx_int8),
            "data": str(data) if data else None, "batches": list(batches), "size": size,
            "warmup_s": warmup_s, "budget_s": budget_s, "environment": env, "rows": list(rows.values())}


class _Callable:
    """A plain function seen as a model by predict_probs (eval/to are no-ops)."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)

    def eval(self) -> "_Callable":
        return self

    def to(self, *a: Any, **k: Any) -> "_Callable":
        return self


def deploy_markdown(report: dict[str, Any]) -> str:
    from .profiling import cpu_description

    env = report["environment"]
    bs = report["batches"]
    head = (f"One trained `sgem_unet` ({report['checkpoint']}) through every CPU inference path, measured "
            f"in one run on {cpu_description(env)} ({env['torch_threads']} threads; native bf16: "
            f"{env['native_bf16']}), "
            f"torch {env['torch']}, ONNX Runtime {env['onnxruntime']}"
            f"{', OpenVINO ' + env['openvino'] if 'openvino' in env else ''}. Speed: forward only, input "
            f"Bx1x{report['size']}x{report['size']} in memory, the paths interleaved in rounds after "
            f"{report['warmup_s']} s of warm-up, {report['budget_s']} s of rounds per batch size, median latency. "
            f"Accuracy: the full test split of {report['data']} through the same path (threshold 0.5).\n\n")
    cols = [f"FPS b{b}" for b in bs] + [f"x fp32 b{b}" for b in bs]
    acc = report["data"] is not None
    header = "| path | " + " | ".join(cols) + (" | IoU | IoU - fp32 | nIoU | F1 | Pd | Fa (x1e-6) |" if acc else " |")
    sep = "|---" * (1 + len(cols) + (6 if acc else 0)) + "|"
    lines = [header, sep]
    for r in report["rows"]:
        cells = [f"{r[f'b{b}_fps']:.2f}" for b in bs] + [f"{r[f'b{b}_speedup']:.2f}" for b in bs]
        if acc:
            cells += [f"{100 * r['iou']:.2f}", f"{100 * r['iou_minus_reference']:+.2f}", f"{100 * r['niou']:.2f}",
                      f"{100 * r['f1']:.2f}", f"{100 * r['pd']:.2f}", f"{1e6 * r['fa']:.2f}"]
        lines.append(f"| {r['path']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"
