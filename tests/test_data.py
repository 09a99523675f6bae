import json
from pathlib import Path

import numpy as np
import pytest
from conftest import real_dataset
from PIL import Image

from sgem.cli import main
from sgem.data import DatasetError, load_image, load_split, read_split, validate_dataset

NUDT = real_dataset("NUDT-SIRST")   # data/NUDT-SIRST or $SGEM_DATA/NUDT-SIRST (conftest)


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)


def make_dataset(root: Path, n: int = 4, size=(32, 40)) -> Path:
    rng = np.random.default_rng(0)
    stems = [f"img{i}" for i in range(n)]
    for s in stems:
        _write(root / "images" / f"{s}.png", rng.integers(0, 255, size, dtype=np.uint8))
        m = np.zeros(size, np.uint8)
        m[5:8, 6:9] = 255
        _write(root / "masks" / f"{s}.png", m)
    (root / "train.txt").write_text("\n".join(stems[: n // 2]) + "\n")
    (root / "test.txt").write_text("\n".join(stems[n // 2:]) + "\n")
    return root


def problems(root, **kw):
    return "\n".join(validate_dataset(root, **kw).problems)


def test_clean_dataset_has_no_problems(tmp_path):
    r = validate_dataset(make_dataset(tmp_path))
    assert r.ok and {k: len(v) for k, v in r.splits.items()} == {"train": 2, "test": 2}
    assert r.image_sizes == {"40x32": 4} and r.target_pixels == [9] * 4


def test_crlf_bom_blank_lines_and_extensions_are_accepted(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train.txt").write_bytes(b"\xef\xbb\xbfimg0\r\n\r\nimg1.png  \r\n")
    assert read_split(root / "train.txt") == ["img0", "img1"]
    assert validate_dataset(root).ok


def test_mask_suffix_pixels0(tmp_path):
    root = make_dataset(tmp_path)
    for m in (root / "masks").iterdir():
        m.rename(m.with_name(m.stem + "_pixels0.png"))
    assert validate_dataset(root).ok


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_image_modes_load_as_grey(tmp_path, mode):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    im = Image.fromarray(grey)
    if mode == "I;16":
        im = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode != "L":
        im = im.convert(mode)
    im.save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.shape == (12, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, grey / 255.0, atol=1 / 255 + 1e-6)


def test_images_of_any_size(tmp_path):
    root = make_dataset(tmp_path)
    _write(root / "images" / "img3.png", np.zeros((50, 70), np.uint8))
    _write(root / "masks" / "img3.png", np.zeros((50, 70), np.uint8))
    r = validate_dataset(root)
    assert r.ok and r.image_sizes == {"40x32": 3, "70x50": 1}


def test_non_binary_masks_are_thresholded_with_a_counted_warning(tmp_path):
    root = make_dataset(tmp_path)
    m = np.zeros((32, 40), np.uint8)
    m[5:8, 6:9] = 200
    m[20, 20] = 100  # below the threshold
    _write(root / "masks" / "img0.png", m)
    r = validate_dataset(root)
    assert r.ok and r.non_binary_masks == 1
    assert "1 mask(s) are not strictly binary" in r.warnings[0]
    with pytest.warns(UserWarning, match="not strictly binary"):
        _, _, masks = load_split(root, "train")
    assert masks[0].sum() == 9


def test_missing_image_and_mask_are_named(tmp_path):
    root = make_dataset(tmp_path)
    (root / "images" / "img0.png").unlink()
    (root / "masks" / "img1.png").unlink()
    p = problems(root)
    assert "image for stem 'img0' (split 'train') not found" in p
    assert "mask for stem 'img1' (split 'train') not found" in p


def test_size_mismatch_is_named(tmp_path):
    root = make_dataset(tmp_path)
    _write(root / "masks" / "img2.png", np.zeros((32, 41), np.uint8))
    assert "img2.png: mask is 41x32 but image img2.png is 40x32" in problems(root)


def test_duplicates_overlap_and_empty_splits(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train.txt").write_text("img0\nimg0\nimg2\n")
    (root / "test.txt").write_text("\n")
    p = problems(root)
    assert "stem 'img0' listed 2 times" in p
    assert "split 'test' is empty" in p
    (root / "test.txt").write_text("img2\nimg3\n")
    assert "stem 'img2' is also in split 'train'" in problems(root)


def test_missing_split_file_and_folders(tmp_path):
    root = make_dataset(tmp_path)
    assert "split list for 'val' not found" in problems(root, splits={"val": "val.txt"})
    assert "dataset folder not found" in problems(tmp_path / "nope")
    (root / "masks").rename(root / "labels")
    assert "masks folder not found" in problems(root)


def test_unreadable_image_is_named(tmp_path):
    root = make_dataset(tmp_path)
    (root / "images" / "img1.png").write_bytes(b"not a png")
    assert "img1.png: cannot read as an image" in problems(root)


def test_load_split_raises_every_problem(tmp_path):
    root = make_dataset(tmp_path)
    (root / "images" / "img0.png").unlink()
    with pytest.raises(DatasetError, match="img0"):
        load_split(root, "train")


def test_check_data_cli(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert main(["check-data", str(root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    (root / "images" / "img0.png").unlink()
    assert main(["check-data", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 1, "test": 2} and len(report["problems"]) == 1


@pytest.mark.nudt
@pytest.mark.skipif(NUDT is None, reason="NUDT-SIRST not found (data/NUDT-SIRST or $SGEM_DATA)")
def test_nudt_sirst_official_split(capsys):
    assert main(["check-data", str(NUDT), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["splits"] == {"train": 663, "test": 664}
    assert r["image_sizes"] == {"256x256": 1327} and r["problems"] == []
    assert r["target_pixels"] == {"min": 5, "median": 40.0, "max": 178}


def _manifest(root):
    import hashlib

    names = sorted([str(p.relative_to(root)) for d in ("images", "masks") for p in (root / d).iterdir()]
                   + ["train.txt", "test.txt"])
    return "".join(f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n" for n in names)


def test_check_data_compares_with_a_canonical_manifest(tmp_path, capsys):
    from sgem.synthetic import make_synthetic

    root = tmp_path / "SET"
    make_synthetic(root, n=6, size=64, seed=2)
    (tmp_path / "SET.sha256").write_text(_manifest(root))
    assert main(["check-data", str(root), "--manifest", str(tmp_path / "SET.sha256")]) == 0
    assert "identical to the canonical SET release (14 files" in capsys.readouterr().out
    # CRLF split lists are the same release; an altered image, a missing mask and an extra file are not
    (root / "train.txt").write_bytes((root / "train.txt").read_bytes().replace(b"\n", b"\r\n"))
    img = sorted((root / "images").iterdir())[1]
    img.write_bytes(img.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    main(["check-data", str(root), "--manifest", str(tmp_path / "SET.sha256")])  # valid or not, it names the file
    out = capsys.readouterr().out
    assert f"1 differing: images/{img.name}" in out and "train.txt" not in out.split("differs from")[1]


def test_hidden_os_files_are_not_extra_files_of_a_release(tmp_path, capsys):
    """Archives made on a Mac (SIRST's masks.zip) carry .DS_Store and ._<name> files:
    not part of the dataset, so not reported; any other unlisted file still is."""
    from sgem.synthetic import make_synthetic

    root = tmp_path / "SET"
    make_synthetic(root, n=4, size=64, seed=2)
    (tmp_path / "SET.sha256").write_text(_manifest(root))
    (root / "masks" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "images" / "._0000.png").write_bytes(b"\x00\x05\x16\x07")
    assert main(["check-data", str(root), "--manifest", str(tmp_path / "SET.sha256")]) == 0
    assert "identical to the canonical SET release" in capsys.readouterr().out
    (root / "masks" / "notes.xml").write_text("<annotation/>")
    main(["check-data", str(root), "--manifest", str(tmp_path / "SET.sha256")])
    out = capsys.readouterr().out
    assert "1 extra: masks/notes.xml" in out and ".DS_Store" not in out


@pytest.mark.nudt
@pytest.mark.skipif(NUDT is None, reason="NUDT-SIRST not found (data/NUDT-SIRST or $SGEM_DATA)")
def test_nudt_sirst_is_the_canonical_release(capsys):
    assert main(["check-data", str(NUDT)]) == 0
    assert "identical to the canonical NUDT-SIRST release (2656 files" in capsys.readouterr().out


def test_a_partial_manifest_says_what_it_covers(tmp_path, capsys):
    from sgem.synthetic import make_synthetic

    root = tmp_path / "SET"
    make_synthetic(root, n=4, size=64, seed=2)
    lines = [ln for ln in _manifest(root).splitlines() if not ln.endswith(".txt") and "/masks/" not in ln
             and " masks/" in ln]
    (tmp_path / "SET.sha256").write_text("# covers: the masks only\n" + "\n".join(lines) + "\n")
    assert main(["check-data", str(root), "--manifest", str(tmp_path / "SET.sha256")]) == 0
    out = capsys.readouterr().out
    assert "identical to the canonical SET release (4 files" in out and "(the manifest covers the masks only)" in out
