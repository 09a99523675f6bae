"""Datasets read in the layouts the field publishes them in."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from sgem.cli import main
from sgem.data import DatasetError, detect_layout, load_split, validate_dataset


def _img(path, h=64, w=64, seed=0, mask=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w)) > 0.98).astype(np.uint8) * 255 if mask else (rng.random((h, w)) * 255).astype(np.uint8)
    if mask:
        arr[5:8, 5:8] = 255
    Image.fromarray(arr).save(path)


def _write(root, train_list, test_list, stems_train=("a1", "a2", "a3"), stems_test=("b1", "b2"),
           img="images", msk="masks", suffix=""):
    for i, s in enumerate(stems_train + stems_test):
        _img(root / img / f"{s}.png", seed=i)
        _img(root / msk / f"{s}{suffix}.png", seed=i, mask=True)
    for rel, stems in ((train_list, stems_train), (test_list, stems_test)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\r\n".join(stems) + "\r\n")


LAYOUTS = {
    "sgem": lambda r: _write(r, "train.txt", "test.txt"),
    "BasicIRSTD": lambda r: _write(r, "img_idx/train_NUDT-SIRST.txt", "img_idx/test_NUDT-SIRST.txt"),
    "DNANet repository": lambda r: _write(r, "50_50/train.txt", "50_50/test.txt"),
    "SIRST (original)": lambda r: _write(r, "idx_427/trainval.txt", "idx_427/test.txt", suffix="_pixels0"),
    "IRSTD-1k": lambda r: _write(r, "trainval.txt", "test.txt", img="IRSTD1k_Img", msk="IRSTD1k_Label"),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_published_layout_is_detected_and_loads(tmp_path, name, capsys):
    LAYOUTS[name](tmp_path / "set")
    layout = detect_layout(tmp_path / "set")
    assert layout.name == name
    stems, images, masks = load_split(tmp_path / "set", "train")
    assert stems == ["a1", "a2", "a3"] and len(images) == len(masks) == 3
    assert load_split(tmp_path / "set", "test")[0] == ["b1", "b2"]
    assert main(["check-data", str(tmp_path / "set")]) == 0
    out = capsys.readouterr().out
    assert f"layout: {name}" in out and "train: 3 images" in out and "test: 2 images" in out


def test_mmseg_style_folders(tmp_path):
    root = tmp_path / "set"
    for split, stems in (("trainval", ["a1", "a2"]), ("test", ["b1"])):
        for i, s in enumerate(stems):
            _img(root / split / "images" / f"{s}.png", seed=i)
            _img(root / split / "masks" / f"{s}.png", seed=i, mask=True)
    assert detect_layout(root).name == "mmseg-style folders"
    assert load_split(root, "train")[0] == ["a1", "a2"] and load_split(root, "test")[0] == ["b1"]


def test_two_matching_layouts_are_an_error_that_lists_both(tmp_path):
    root = tmp_path / "set"
    LAYOUTS["sgem"](root)
    (root / "50_50").mkdir()
    shutil.copy(root / "train.txt", root / "50_50" / "train.txt")
    shutil.copy(root / "test.txt", root / "50_50" / "test.txt")
    with pytest.raises(DatasetError, match=r"2 layouts match: sgem .*DNANet repository .*--split train=FILE"):
        detect_layout(root)
    assert "2 layouts match" in " ".join(validate_dataset(root).problems)


def test_a_sirst_like_defect_is_named_with_a_remedy_that_works_as_printed(tmp_path, monkeypatch, capsys):
    """SIRST's Misc_111: image 325x220, mask 592x400."""
    root = tmp_path / "SIRST"
    LAYOUTS["SIRST (original)"](root)
    _img(root / "masks" / "b2_pixels0.png", h=40, w=90, mask=True)   # the defective pair, in the test split
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert all(len(line) <= 200 for line in out.splitlines()), max(out.splitlines(), key=len)
    assert "b2_pixels0.png: mask is 90x40 but image b2.png is 64x64" in out
    assert "test: 2 images found for the listed stems, 1 usable (1 with problems)" in out
    command = next(line for line in out.splitlines() if "sgem evaluate" in line).split("e.g. sgem ", 1)[1].split()
    # followed literally (with a checkpoint in place of CKPT), it scores the usable images
    command[command.index("CKPT")] = str(pytest.importorskip("sgem.evaluate").default_checkpoint())
    assert main(command) == 0
    assert '"images": 1' in capsys.readouterr().out


def test_a_filtered_split_file_works_in_another_layout(tmp_path):
    LAYOUTS["IRSTD-1k"](tmp_path / "set")
    (tmp_path / "keep.txt").write_text("b1\n")
    assert load_split(tmp_path / "set", "test", split_file=str(tmp_path / "keep.txt"))[0] == ["b1"]
