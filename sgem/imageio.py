"""One image reader for datasets, masks and saved predictions.

Every mode Pillow opens is read to values in [0, 1] by a documented rule, or refused
with an error that names the file and what was found; nothing is guessed silently.

| Pillow mode | what it is | value in [0, 1] |
|---|---|---|
| ``1`` | 1-bit | 0 or 1 |
| ``L`` | 8-bit grey | v / 255 |
| ``P``, ``PA`` | palette | the colour's grey value (ITU-R 601 luma) / 255; transparency ignored |
| ``RGB``, ``RGBA``, ``LA``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` | colour (alpha ignored) | grey value (ITU-R 601 luma) / 255 |
| ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` | 16-bit grey | v / 65535 |
| ``I`` | 32-bit integer (Pillow's reading of some 16-bit files) | v / 65535; refused outside 0..65535 |
| ``F`` | 32-bit float (TIFF) | v as is; refused outside [0, 1] or with NaN |

Masks and prediction maps are read by the same rules, then:

* a map whose values are all 0 or 1 (in any container: an 8-bit PNG holding {0, 1}, a
  float TIFF holding {0.0, 1.0}) is binary: 1 is target;
* a mask otherwise: target where the value is > 0.5 (for 8-bit masks, grey > 127);
* a prediction otherwise: the value is the target probability.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

COLOUR_MODES = ("RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV", "PA", "P", "La", "RGBa", "RGBX")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(ValueError):
    """A file that cannot be read as an image by the rules above."""


def read_raw(path: str | Path) -> tuple[np.ndarray, float, str]:
    """(values as stored, the full-scale value, Pillow mode): the file fully decoded (a
    truncated file is an error, not a partial image)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.uint8), 1.0, mode
            if mode == "L":
                return np.asarray(im), 255.0, mode
            if mode in SIXTEEN_BIT:
                return np.asarray(im).astype(np.uint16), 65535.0, mode
            if mode == "I":
                arr = np.asarray(im)
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise ImageReadError(f"{path}: 32-bit integer image with values {arr.min()}..{arr.max()}; "
                                         f"expected 0..65535 (16-bit data)")
                return arr.astype(np.int64), 65535.0, mode
            if mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                if not np.isfinite(arr).all():
                    raise ImageReadError(f"{path}: float image contains NaN or infinite values")
                if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
                    raise ImageReadError(f"{path}: float image with values {arr.min():g}..{arr.max():g}; "
                                         f"expected values in [0, 1]")
                return arr, 1.0, mode
            if mode in COLOUR_MODES:
                src = im
                if mode in ("P", "PA"):
                    src = im.convert("RGBA")
                return np.asarray(src.convert("L")), 255.0, mode
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read as an image ({exc})") from exc
    raise ImageReadError(f"{path}: unsupported image mode {mode!r} (supported: 1, L, P, colour modes, "
                         f"16-bit, 32-bit integer, 32-bit float)")


def read_image(path: str | Path) -> np.ndarray:
    """A grey image as float32 (H, W) in [0, 1]."""
    raw, scale, _ = read_raw(path)
    return (raw.astype(np.float32) / np.float32(scale)) if scale != 1.0 else raw.astype(np.float32)


def is_binary(raw: np.ndarray) -> bool:
    """All values 0 or 1, whatever the container."""
    values = np.unique(raw)
    return bool(values.size) and bool(np.isin(values, (0, 1)).all())


def read_mask(path: str | Path) -> tuple[np.ndarray, bool]:
    """(bool target mask, strictly binary): {0, 1} in any container is binary; otherwise
    target where the value is > 0.5 of full scale; strictly binary means only the two
    extreme values occur ({0, 1} or {0, full scale})."""
    raw, scale, _ = read_raw(path)
    if is_binary(raw):
        return raw > 0, True
    values = np.unique(raw)
    strict = bool(np.isin(values, (0, scale)).all())
    return raw.astype(np.float64) > 0.5 * scale, strict


def read_prediction(path: str | Path) -> np.ndarray:
    """A saved prediction map as float32 probabilities in [0, 1]: {0, 1} maps are binary."""
    raw, scale, _ = read_raw(path)
    if is_binary(raw):
        return raw.astype(np.float32)
    return (raw.astype(np.float64) / scale).astype(np.float32)
