"""sgem runs where only torch, numpy, scipy, pillow, pyyaml and tqdm are installed (a GPU
machine's preinstalled stack, say): the optional packages are imported by the commands
that need them, which then say what to install in one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ["ptflops", "dvclive", "dvc", "papermill", "matplotlib", "seaborn", "onnx", "onnxruntime"]

SCRIPT = textwrap.dedent('''
    import importlib, pkgutil, sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # `import name` now fails as if it were not installed
    import sgem
    skipped = {"sgem.plots", "sgem._papermill"}  # figures: the [plots] extra; papermill's engine plugin
    for m in pkgutil.walk_packages(sgem.__path__, "sgem."):
        if m.name not in skipped and m.name != "sgem.__main__":
            importlib.import_module(m.name)
    from sgem.cli import main
    data, out = sys.argv[2], sys.argv[3]
    assert main(["make-synthetic", data, "--n", "8", "--size", "64"]) == 0
    assert main(["train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "2", "--crop-size", "32",
                 "--model-kwargs", '{"widths": [4, 8, 16, 32, 64], "sgem_dim": 16}', "--no-progress"]) == 0
    assert main(["export", "--checkpoint", out + "/checkpoint.pt", "--out", out + "/w.pt"]) == 0
    assert main(["evaluate", "--checkpoint", out + "/w.pt", "--data", data, "--no-curves"]) == 0
    assert main(["bench", "--models", "acm", "--size", "32", "--batch", "1", "--runs", "1", "--out-dir", out]) == 0
    assert main(["profile", "acm", "--size", "32"]) == 2   # MACs need ptflops: a one-line refusal
    assert main(["export", "--format", "onnx", "--model", "acm", "--out", out + "/a.onnx"]) == 2
    print("OK")
''')


def test_commands_run_without_the_optional_packages(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(tmp_path / "data"), str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout[-2000:] + r.stderr[-3000:]
    assert "sgem profile: error: counting MACs needs ptflops, which is not installed: pip install ptflops" in r.stderr
    assert "sgem export: error: ONNX export needs onnx, which is not installed: pip install onnx (or the " \
           "package's [deploy] extra)" in r.stderr
    assert "Traceback" not in r.stderr
