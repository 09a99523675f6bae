"""The paper's own numbers (Table 1, NUDT-SIRST test split, RTX 3090), as data.

Columns: IoU and F1 (x100), "FLOPs (G)" (module-level MACs, see docs/protocols.md),
Params (M), FPS. ``registry`` names the model in :mod:`sgem.models` where one exists.
"""

from __future__ import annotations

PAPER_DEVICE = "NVIDIA GeForce RTX 3090"
PAPER_DATASET = "NUDT-SIRST"

TABLE1: list[dict] = [
    {"model": "ACMNet", "registry": "acm", "iou": 60.75, "f1": 75.58, "gflops": 1.31, "params_m": 1.54, "fps": 103},
    {"model": "ALCNet", "registry": "alcnet", "iou": 81.60, "f1": 89.87, "gflops": 4.34, "params_m": 0.37, "fps": 20},
    {"model": "IAANet", "registry": None, "iou": 84.03, "f1": 91.32, "gflops": 436.79, "params_m": 14.05, "fps": 14},
    {"model": "UIUNet", "registry": "uiunet", "iou": 85.83, "f1": 92.37, "gflops": 54.50, "params_m": 50.54, "fps": 48},
    {"model": "ISNet", "registry": "isnet", "iou": 66.77, "f1": 80.08, "gflops": 30.63, "params_m": 1.09, "fps": 70},
    {"model": "DNANet", "registry": "dnanet", "iou": 86.57, "f1": 92.80, "gflops": 14.28, "params_m": 4.70, "fps": 27},
    {"model": "ABCNet", "registry": None, "iou": 83.28, "f1": 90.87, "gflops": 5.31, "params_m": 9.09, "fps": 95},
    {"model": "EGPNet", "registry": None, "iou": 71.52, "f1": 83.39, "gflops": 19.55, "params_m": 3.54, "fps": 92},
    {"model": "SGEM (Ours)", "registry": "sgem_unet", "iou": 87.64, "f1": 93.41, "gflops": 15.92, "params_m": 8.69,
     "fps": 342},
]

# Reference complexity at 256x256, batch 1 (thop MACs, params) of each model's official
# configuration, as IRSTD toolboxes count it (PROTOCOLS); ``in_channels`` is the input of
# the reference count; ``transposed`` says how the reference counted transposed
# convolutions ("output": thop's per-output-pixel count). Notes explain any difference.
REFERENCE_COMPLEXITY: dict[str, dict] = {
    "sgem_unet": {"gmacs": 15.92, "params_m": 8.69, "in_channels": 1, "transposed": "input",
                  "source": "the paper's Table 1 (calibration target, docs/architecture.md)"},
    "dnanet": {"gmacs": 14.28, "params_m": 4.697, "in_channels": 3, "transposed": "input",
               "source": "thop on the official DNANet code (= the paper's Table 1 row)"},
    "uiunet": {"gmacs": 54.50, "params_m": 50.54, "in_channels": 3, "transposed": "input",
               "source": "thop on the official UIU-Net code (= the paper's Table 1 row)"},
    "alcnet": {"gmacs": 0.378, "params_m": 0.427, "in_channels": 3, "transposed": "output",
               "source": "thop on BasicIRSTD's ALCNet (ASKC ResNet-FPN). Its 0.520 M total includes 0.093 M in two "
                         "stages its forward never runs; thop's 0.427 M (modules that run) is the model here"},
    "isnet": {"gmacs": 30.6, "params_m": 0.966, "in_channels": 1, "transposed": "output",
              "source": "thop on BasicIRSTD's ISNet (1-channel stem). Here +2 % params, +2 % MACs: the pure-torch "
                        "deformable convolutions carry a bias and their offset branch is counted"},
    "acm": {"gmacs": 0.402, "params_m": 0.398, "in_channels": 3, "transposed": "output",
            "source": "thop on BasicIRSTD's ACM (ResUNet, layers 3-3-3, widths 8-16-32-64); thop counts its two "
                      "transposed convolutions per output pixel, 4x their real cost (+0.050 G)"},
}
