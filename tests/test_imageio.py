"""Every image mode read by its documented rule, or refused by name (sgem.imageio)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sgem.cli import main
from sgem.evaluate import evaluate_pred_dir, load_prediction
from sgem.imageio import ImageReadError, read_image, read_mask, read_prediction
from sgem.synthetic import make_synthetic

GREY = np.array([[0, 64], [128, 255]], dtype=np.uint8)


@pytest.mark.parametrize("mode,make,expected", [
    ("L", lambda: Image.fromarray(GREY), GREY / 255),
    ("RGB", lambda: Image.fromarray(np.stack([GREY] * 3, -1)), GREY / 255),
    ("RGBA", lambda: Image.fromarray(np.stack([GREY] * 3 + [np.full_like(GREY, 7)], -1)), GREY / 255),
    ("LA", lambda: Image.fromarray(np.stack([GREY, np.full_like(GREY, 7)], -1)), GREY / 255),
    ("P", lambda: Image.fromarray(GREY).convert("P"), GREY / 255),
    ("I;16", lambda: Image.fromarray(GREY.astype(np.uint16) * 257), GREY / 255),
    ("1", lambda: Image.fromarray(GREY > 100).convert("1"), (GREY > 100).astype(float)),
    ("F", lambda: Image.fromarray((GREY / 255).astype(np.float32)), GREY / 255),
])
def test_each_mode_reads_to_the_documented_values(tmp_path, mode, make, expected):
    im = make()
    assert im.mode == mode
    path = tmp_path / ("x.tif" if mode in ("F", "I;16") else "x.png")
    im.save(path)
    np.testing.assert_allclose(read_image(path), expected, atol=1 / 255)


@pytest.mark.parametrize("values,msg", [(np.array([[0, 2.0]], np.float32), r"values 0\.\.2; expected values in \[0, 1\]"),
                                        (np.array([[0, np.nan]], np.float32), "NaN")])
def test_float_images_outside_the_unit_range_are_refused(tmp_path, values, msg):
    Image.fromarray(values).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match=msg):
        read_image(tmp_path / "f.tif")


def test_32bit_integer_images_beyond_16_bits_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(ImageReadError, match="expected 0..65535"):
        read_image(tmp_path / "i.tif")


def test_not_an_image_and_truncated_files_are_refused(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png: cannot read as an image"):
        read_image(tmp_path / "notes.png")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


@pytest.mark.parametrize("container", ["png8_01", "png8_0255", "tif_float01", "png1"])
def test_binary_maps_in_any_container(tmp_path, container):
    mask = np.zeros((8, 8), bool)
    mask[2:4, 3:6] = True
    path = tmp_path / ("m.tif" if container.startswith("tif") else "m.png")
    if container == "png8_01":
        Image.fromarray(mask.astype(np.uint8)).save(path)
    elif container == "png8_0255":
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    elif container == "tif_float01":
        Image.fromarray(mask.astype(np.float32)).save(path)
    else:
        Image.fromarray(mask).convert("1").save(path)
    got, strict = read_mask(path)
    assert strict and np.array_equal(got, mask)
    assert np.array_equal(read_prediction(path) > 0.5, mask)


def test_perfect_predictions_score_1_whatever_their_container(tmp_path):
    make_synthetic(tmp_path / "d", n=8, size=64, seed=3)
    from sgem.data import load_split

    stems, _, masks = load_split(tmp_path / "d", "test")
    for container in ("png01", "tif"):
        out = tmp_path / container
        out.mkdir()
        for s, m in zip(stems, masks):
            if container == "png01":
                Image.fromarray(m.astype(np.uint8)).save(out / f"{s}.png")
            else:
                Image.fromarray(m.astype(np.float32)).save(out / f"{s}.tif")
        r = evaluate_pred_dir(out, tmp_path / "d", curves=False)
        assert r["iou"] == 1.0 and r["pd"] == 1.0, container


def test_check_data_reads_images_fully_and_reports_ambiguous_stems(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # check-data writes its filtered split file into the working folder
    root = tmp_path / "d"
    make_synthetic(root, n=8, size=64, seed=1)
    stem = (root / "train.txt").read_text().split()[0]
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "images" / f"{stem}.bmp")   # a second file, one stem
    victim = (root / "test.txt").read_text().split()[0]
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(
        root / "images" / f"{victim}.jpg")
    (root / "images" / f"{victim}.png").unlink()
    data = (root / "images" / f"{victim}.jpg").read_bytes()
    (root / "images" / f"{victim}.jpg").write_bytes(data[: len(data) // 2])          # truncated
    assert main(["check-data", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"2 files could be the image of stem '{stem}'" in out and f"{victim}.jpg" in out


def test_load_prediction_keeps_probabilities(tmp_path):
    p = np.array([[0.0, 0.25], [0.5, 1.0]])
    Image.fromarray(np.round(p * 65535).astype(np.uint16)).save(tmp_path / "p.png")
    np.testing.assert_allclose(load_prediction(tmp_path / "p.png"), p, atol=1e-4)
