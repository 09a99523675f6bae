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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
