import hashlib

import numpy as np
from PIL import Image

from sgem.cli import main
from sgem.data import validate_dataset
from sgem.metrics import connected_components
from sgem.synthetic import MAX_TARGET_PX, make_sample, make_synthetic


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_output(tmp_path):
    make_synthetic(tmp_path / "a", n=6, size=64, seed=3)
    make_synthetic(tmp_path / "b", n=6, size=64, seed=3)
    make_synthetic(tmp_path / "c", n=6, size=64, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_image_i_does_not_depend_on_n(tmp_path):
    """A dataset of 4 and one of 8 with the same seed share their first 4 images byte for byte."""
    make_synthetic(tmp_path / "small", n=4, size=64, seed=2)
    make_synthetic(tmp_path / "large", n=8, size=64, seed=2)
    small = sorted((tmp_path / "small" / "images").iterdir())
    assert len(small) == 4
    for p in small:
        assert p.read_bytes() == (tmp_path / "large" / "images" / p.name).read_bytes(), p.name
    a, _ = make_sample(2, 2, 64)            # seed 2, index 2: the file 000003.png
    assert np.array_equal(a, np.asarray(Image.open(next(
        f for f in sorted((tmp_path / "large" / "images").iterdir()) if f.stem.endswith("0003")))))


def test_output_is_a_valid_nudt_like_dataset(tmp_path, capsys):
    assert main(["make-synthetic", str(tmp_path), "--n", "24", "--size", "128", "--seed", "0"]) == 0
    r = validate_dataset(tmp_path)
    assert r.ok and len(r.splits["train"]) == 12 and len(r.splits["test"]) == 12
    assert r.empty_masks == 0 and r.non_binary_masks == 0
    assert set(r.targets_per_image) <= {1, 2, 3}


def test_targets_are_small_and_varied():
    areas = []
    for i in range(30):
        img, mask = make_sample(1, i, 128)
        assert img.dtype == np.uint8 and mask.any()
        areas.extend(connected_components(mask).areas.tolist())
    assert min(areas) >= 3 and max(areas) <= MAX_TARGET_PX
    assert max(areas) > 5 * min(areas)  # from a few pixels to tens of pixels


def test_targets_are_brighter_than_their_surroundings_on_average():
    contrasts = []
    for i in range(20):
        img, mask = make_sample(2, i, 128)
        ring = np.zeros_like(mask)
        from scipy import ndimage
        ring = ndimage.binary_dilation(mask, iterations=4) & ~mask
        contrasts.append(img[mask].mean() - img[ring].mean())
    assert np.median(contrasts) > 5  # grey levels
