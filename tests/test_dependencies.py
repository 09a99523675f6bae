"""Every third-party import of the package, the notebooks, the tools and the tests is
declared in pyproject.toml (dependencies or extras) and in environment.yml."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name (pip) and conda-forge name, where they differ
PIP_NAME = {"PIL": "pillow", "yaml": "pyyaml", "zmq": "pyzmq"}
CONDA_NAME = {"torch": "pytorch", "PIL": "pillow", "yaml": "pyyaml", "zmq": "pyzmq"}


def _imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party_imports() -> set[str]:
    names: set[str] = set()
    for folder in ("sgem", "tests", "tools"):
        for p in (REPO / folder).rglob("*.py"):
            names |= _imports(p.read_text())
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                names |= _imports("".join(cell["source"]))
    from sgem._optional import KNOWN   # imported by name where a command needs them

    names |= set(KNOWN)
    # conftest, the test modules themselves and the tools' scripts (one imports another)
    local = {p.stem for folder in ("tests", "tools") for p in (REPO / folder).glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in {"sgem", "__future__"} | local}


def _name(req: str) -> str:
    return re.split(r"[<>=!\[ ;]", req.strip(), maxsplit=1)[0].lower()


def test_every_import_is_declared_for_pip_and_conda():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        pip_names |= {_name(r) for r in reqs}
    env = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    conda_names = {_name(d) for d in env if isinstance(d, str)}
    conda_names |= {_name(d) for item in env if isinstance(item, dict) for d in item.get("pip", [])}
    imports = third_party_imports()
    assert {"torch", "numpy", "matplotlib", "yaml"} <= imports        # the scan sees real imports
    missing_pip = sorted(n for n in imports if PIP_NAME.get(n, n).lower() not in pip_names)
    missing_conda = sorted(n for n in imports if CONDA_NAME.get(n, n).lower() not in conda_names)
    assert not missing_pip, f"imported but not in pyproject.toml: {missing_pip}"
    assert not missing_conda, f"imported but not in environment.yml: {missing_conda}"


def test_torch_is_a_range_in_the_package_and_pinned_only_in_constraints():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(r for r in deps if _name(r) == "torch")
    assert "==" not in torch_req and ">=" in torch_req
    assert re.search(r"^torch==\d", (REPO / "constraints.txt").read_text(), re.M)
    env = (REPO / "environment.yml").read_text()
    assert re.search(r"pytorch>=", env) and not re.search(r"pytorch=\d", env)
