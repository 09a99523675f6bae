"""A NUDT-like synthetic IRSTD dataset, byte-identical for a given seed.

NUDT-SIRST is itself synthetic: real backgrounds (sky and clouds, sea, fields, cities)
with small targets pasted in. This generator imitates that closely enough for a demo
and for tests to mean something:

* backgrounds: ``sky`` (gradient and clouds), ``sea`` (sky, horizon line, waves, sun
  glints), ``ground`` (terrain, buildings and roads with hard edges);
* 1 to 3 targets per image, from a few pixels to about 180 px, of varied shape (round,
  elongated, plane-like crosses) and signal-to-clutter ratio (SCR 1.5 to 10);
* unlabelled clutter that looks like a target at a glance: bright blobs larger than any
  target, thin streaks, isolated hot pixels, glints;
* sensor noise; 8-bit grey PNGs; masks {0, 255} (a target pixel is where the target's
  own signal is over 30 % of its peak).

Each image has its own generator seeded by ``(seed, index)``, so image *i* does not
depend on how many images are made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .io import atomic_write, atomic_write_text

BACKGROUNDS = ("sky", "sea", "ground")
MIN_TARGET_PX, MAX_TARGET_PX = 3, 180


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    field -= field.mean()
    return field / (field.std() + 1e-9)


def _background(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    h = w = size
    yy = np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))
    if kind == "sky":
        base = rng.uniform(0.25, 0.5) + rng.uniform(-0.15, 0.15) * yy
        clouds = _smooth_noise(rng, (h, w), size / rng.uniform(6, 14))
        cover = rng.uniform(0.0, 0.25)
        img = base + cover * np.clip(clouds, 0, None) + 0.02 * _smooth_noise(rng, (h, w), 2)
    elif kind == "sea":
        horizon = int(h * rng.uniform(0.2, 0.55))
        sky = rng.uniform(0.35, 0.6) - 0.1 * yy + 0.05 * _smooth_noise(rng, (h, w), size / 8)
        sea_level = rng.uniform(0.15, 0.35)
        waves = _smooth_noise(rng, (h, w), (1.0, rng.uniform(4, 10)))
        sea = sea_level + 0.05 * waves + 0.1 * (yy - horizon / h)
        img = np.where(np.arange(h)[:, None] < horizon, sky, sea)
        # glints: clusters of bright pixels on wave crests (unlabelled)
        glint = (waves > rng.uniform(2.4, 3.2)) & (np.arange(h)[:, None] > horizon + 3)
        img = img + 0.25 * glint * rng.uniform(0.5, 1.0)
        img = ndimage.gaussian_filter(img, 0.6)
    elif kind == "ground":
        img = rng.uniform(0.3, 0.5) + 0.08 * _smooth_noise(rng, (h, w), size / 10)
        for _ in range(rng.integers(4, 16)):  # buildings: rectangles with hard edges
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            bh, bw = rng.integers(6, size // 5), rng.integers(6, size // 5)
            img[y0:y0 + bh, x0:x0 + bw] += rng.uniform(-0.15, 0.2)
        for _ in range(rng.integers(0, 4)):  # roads: bright straight lines
            if rng.random() < 0.5:
                y = rng.integers(0, h)
                img[y:y + rng.integers(1, 4), :] += rng.uniform(0.05, 0.15)
            else:
                x = rng.integers(0, w)
                img[:, x:x + rng.integers(1, 4)] += rng.uniform(0.05, 0.15)
        img = img + 0.03 * _smooth_noise(rng, (h, w), 1.0)
    else:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUNDS}")
    return img


def _blob(size: int, cy: float, cx: float, sy: float, sx: float, theta: float) -> np.ndarray:
    r = int(np.ceil(4 * max(sy, sx))) + 2
    y0, y1 = max(0, int(cy) - r), min(size, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(size, int(cx) + r + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    out = np.zeros((size, size))
    out[y0:y1, x0:x1] = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return out


def _target_profile(rng: np.random.Generator, size: int, cy: float, cx: float) -> np.ndarray:
    shape = rng.choice(["round", "elongated", "plane"], p=[0.5, 0.3, 0.2])
    theta = rng.uniform(0, np.pi)
    scale = rng.uniform(0.6, 3.6) ** 1.0
    if shape == "round":
        return _blob(size, cy, cx, scale, scale * rng.uniform(0.8, 1.25), theta)
    if shape == "elongated":
        return _blob(size, cy, cx, scale * 0.5, scale * rng.uniform(1.5, 2.5), theta)
    body = _blob(size, cy, cx, scale * 0.45, scale * 2.0, theta)
    wings = _blob(size, cy, cx, scale * 0.4, scale * 1.5, theta + np.pi / 2)
    return np.maximum(body, 0.9 * wings)


def _local_stats(img: np.ndarray, cy: int, cx: int, r: int = 10) -> tuple[float, float]:
    patch = img[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1]
    return float(patch.mean()), float(patch.std())


def make_sample(seed: int, index: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (H, W), mask bool (H, W)) pair."""
    if size < 40:  # targets keep an 8-pixel margin and up to 12 pixels of radius
        raise ValueError(f"size must be >= 40, got {size}")
    rng = np.random.default_rng([seed, index])
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, size, kind)
    mask = np.zeros((size, size), dtype=bool)
    margin = 8

    # unlabelled clutter first, so targets are drawn over it where they overlap
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(margin, size - margin, 2)
        kind_c = rng.choice(["big", "streak", "hot"])
        _, std = _local_stats(img, int(cy), int(cx))
        if kind_c == "big":      # brighter than targets' surroundings, but too large to be one
            prof = _blob(size, cy, cx, rng.uniform(6, 10), rng.uniform(6, 10), rng.uniform(0, np.pi))
            img += rng.uniform(0.08, 0.25) * prof
        elif kind_c == "streak":  # thin and long
            prof = _blob(size, cy, cx, rng.uniform(0.5, 0.8), rng.uniform(8, 20), rng.uniform(0, np.pi))
            img += rng.uniform(0.08, 0.2) * prof
        else:                     # a single hot pixel: below the smallest target
            img[int(cy), int(cx)] += rng.uniform(0.15, 0.4)

    n_targets = int(rng.integers(1, 4))
    placed = 0
    attempts = 0
    while placed < n_targets and attempts < 50:
        attempts += 1
        cy, cx = rng.uniform(margin, size - margin, 2)
        prof = _target_profile(rng, size, cy, cx)
        tmask = prof > 0.3
        area = int(tmask.sum())
        if not MIN_TARGET_PX <= area <= MAX_TARGET_PX:
            continue
        grown = ndimage.binary_dilation(tmask, iterations=3)
        if (grown & mask).any():
            continue
        mean, std = _local_stats(img, int(cy), int(cx))
        scr = rng.uniform(1.5, 10.0)
        amp = max(scr * max(std, 0.01), 0.06)
        amp = min(amp, 1.0 - mean) if mean < 0.9 else 0.1
        img += amp * prof
        mask |= tmask
        placed += 1

    img += rng.normal(0.0, rng.uniform(0.004, 0.015), img.shape)
    img8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return img8, mask


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: Image.fromarray(array, mode="L").save(fh, format="PNG"), binary=True)


def make_synthetic(out: str | Path, n: int = 200, size: int = 256, seed: int = 0,
                   train_fraction: float = 0.5) -> dict:
    """Write ``n`` samples in the field's layout under ``out``; return a summary."""
    if n < 2:
        raise ValueError(f"n must be >= 2 (one train and one test image), got {n}")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    stems = [f"{i + 1:06d}" for i in range(n)]
    target_px = []
    for i, stem in enumerate(stems):
        img, mask = make_sample(seed, i, size)
        _write_png(out / "images" / f"{stem}.png", img)
        _write_png(out / "masks" / f"{stem}.png", (mask * 255).astype(np.uint8))
        target_px.append(int(mask.sum()))
    order = np.random.default_rng([seed, n, 7]).permutation(n)
    n_train = min(max(1, int(round(n * train_fraction))), n - 1)
    train = sorted(stems[i] for i in order[:n_train])
    test = sorted(stems[i] for i in order[n_train:])
    atomic_write_text(out / "train.txt", "\n".join(train) + "\n")
    atomic_write_text(out / "test.txt", "\n".join(test) + "\n")
    return {"root": str(out), "n": n, "size": size, "seed": seed, "train": len(train), "test": len(test),
            "target_pixels": {"min": min(target_px), "median": float(np.median(target_px)),
                              "max": max(target_px)}}
