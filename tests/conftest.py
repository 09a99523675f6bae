import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Real datasets are found the way users find them (sgem.data.resolve_dataset): data/<NAME>
# in the repository, then $SGEM_DATA/<NAME>. Where SGEM_DATA is not set, the tests look in
# the datasets folder shared beside the repository, if there is one; tests that need a
# real dataset skip cleanly without it.
_SIBLING = REPO.parent / "shared" / "datasets"
if "SGEM_DATA" not in os.environ and _SIBLING.is_dir():
    os.environ["SGEM_DATA"] = str(_SIBLING)


def real_dataset(name: str) -> Path | None:
    """The folder of a real dataset (e.g. 'NUDT-SIRST'), or None where it is absent."""
    for base in (REPO / "data", Path(os.environ["SGEM_DATA"]) if os.environ.get("SGEM_DATA") else None):
        if base is not None and (base / name).is_dir():
            return base / name
    return None


def tracked_files(pattern: str) -> list[str]:
    """The repository's files under git that match ``pattern`` (git's pathspec); skips the
    calling test outside a git checkout, where what is committed cannot be told apart."""
    import subprocess

    try:
        r = subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True, timeout=30)
    except OSError:
        pytest.skip("git not installed")
    if r.returncode != 0 or not r.stdout.strip():
        pytest.skip("not a git checkout")
    return r.stdout.split()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
