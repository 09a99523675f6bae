"""IRSTD datasets in the field's layout, read defensively and validated before training.

Layout (NUDT-SIRST, SIRST, IRSTD-1k as distributed)::

    ROOT/images/<stem>.png      any image Pillow reads (every mode: sgem.imageio); any size
    ROOT/masks/<stem><suffix>.png   suffix "" or e.g. "_pixels0" (SIRST)
    ROOT/train.txt, ROOT/test.txt   one stem per line (LF or CRLF); other names by parameter

What public copies contain, and what happens to it:

* CRLF split lists, a UTF-8 BOM, trailing blanks, blank lines, a file extension on a
  stem: accepted and normalised.
* Images, masks and prediction maps are read by one reader (:mod:`sgem.imageio`, which
  has the rule for every Pillow mode): colour to one grey channel (ITU-R 601 luma; NUDT's
  RGB PNGs have equal channels, so nothing is lost), 16-bit scaled by 65535, float
  TIFFs taken as they are when in [0, 1]; anything else is refused with the file named.
* Masks: {0, 1} in any container is binary; otherwise a pixel is target above half
  the full scale (grey > 127 for 8-bit). Masks with other values than the two extremes
  are thresholded and counted in a warning, never silently.

Validation (:func:`validate_dataset`) reports every problem at once, each naming the
file and what was expected: missing image or mask, unreadable file, image/mask size
mismatch, duplicate stems, several files for one stem, empty split, overlapping splits.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .imageio import ImageReadError, read_image, read_mask, read_raw

IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_MASK_SUFFIXES = ("", "_pixels0", "_mask")


DATA_ENV = "SGEM_DATA"   # a folder holding datasets by name (NUDT-SIRST/, SIRST/, ...)


def resolve_dataset(name_or_path: str | Path) -> Path:
    """A dataset folder given by path, or by name: ``data/<NAME>`` (in the working
    directory: the repository's git-ignored data folder), then ``$SGEM_DATA/<NAME>``.
    Returns the argument unchanged when none exists, so that the error downstream names
    what was given."""
    p = Path(name_or_path)
    if p.exists():
        return p
    candidates = [Path("data") / p]
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]) / p)
    for c in candidates:
        if c.is_dir():
            return c
    return p


class DatasetError(ValueError):
    """The dataset cannot be used; ``problems`` lists every reason found."""

    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.root = Path(root)
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(f"dataset {self.root} has {len(self.problems)} problem(s):\n  {shown}{more}")


def read_split(path: str | Path) -> list[str]:
    """Stems listed in a split file (CRLF, BOM, blanks and extensions tolerated)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: split list is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         f"expected one stem per line") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder; expected a split list file (one stem per line)") from None
    stems = []
    for line in text.splitlines():
        stem = line.strip()
        if not stem or stem.startswith("#"):
            continue
        if Path(stem).suffix.lower() in IMAGE_EXTS:
            stem = Path(stem).stem
        stems.append(stem)
    return stems


def find_image(directory: Path, stem: str, suffixes: Iterable[str] = ("",)) -> Path | None:
    for suffix in suffixes:
        for ext in IMAGE_EXTS:
            for e in (ext, ext.upper()):
                p = directory / f"{stem}{suffix}{e}"
                if p.is_file():
                    return p
    return None


def load_image(path: str | Path) -> np.ndarray:
    """A grey image as float32 (H, W) in [0, 1] (the rules per mode: :mod:`sgem.imageio`)."""
    return read_image(path)


def load_mask(path: str | Path) -> np.ndarray:
    """A target mask as bool (H, W) (:func:`sgem.imageio.read_mask`)."""
    return read_mask(path)[0]


def image_files(directory: Path, stem: str, suffixes: Iterable[str] = ("",)) -> list[Path]:
    """Every file in ``directory`` that could be the image of ``stem`` (several: ambiguous)."""
    found = []
    for suffix in suffixes:
        for ext in IMAGE_EXTS:
            for e in dict.fromkeys((ext, ext.upper())):
                p = directory / f"{stem}{suffix}{e}"
                if p.is_file() and p not in found:
                    found.append(p)
    return found


@dataclass
class Sample:
    stem: str
    image: Path
    mask: Path


def _histogram(counts: dict[str, int], unit: str = "", top: int = 4) -> str:
    """'256x256 x1327' or, with many values, the most frequent and a count of the rest."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} x{v}" for k, v in items[:top])
    rest = items[top:]
    if rest:
        shown += f", and {sum(v for _, v in rest)} images in {len(rest)} other sizes" if unit else \
            f", {len(rest)} others"
    return shown or "-"


@dataclass
class DatasetReport:
    """What :func:`validate_dataset` found."""

    root: Path
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    layout: str = ""
    bad_stems: dict[str, list[str]] = field(default_factory=dict)   # per split: stems whose files have problems
    image_sizes: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    target_pixels: list[int] = field(default_factory=list)
    targets_per_image: list[int] = field(default_factory=list)
    empty_masks: int = 0
    non_binary_masks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            raise DatasetError(self.root, self.problems)

    def summary(self) -> str:
        """A few short lines whatever the dataset (sizes as a short histogram); every
        count says what it includes."""
        lines = [f"dataset {self.root}"]
        if self.layout:
            lines.append(f"  layout: {self.layout}")
        for name, samples in self.splits.items():
            bad = len(self.bad_stems.get(name, []))
            usable = f", {len(samples) - bad} usable ({bad} with problems)" if bad else ""
            lines.append(f"  {name}: {len(samples)} images found for the listed stems{usable}")
        n = sum(self.image_sizes.values())
        lines.append(f"  statistics below: the {n} usable images")
        lines.append("  image sizes: " + _histogram(self.image_sizes, unit="px"))
        lines.append("  image modes: " + _histogram(self.image_modes))
        if self.target_pixels:
            t = np.asarray(self.target_pixels)
            lines.append(f"  target pixels per image: min {t.min()}, median {int(np.median(t))}, "
                         f"max {t.max()} (empty masks: {self.empty_masks})")
        if self.targets_per_image:
            c = np.bincount(self.targets_per_image)
            lines.append("  targets per image: " + ", ".join(f"{k}: {v}" for k, v in enumerate(c) if v))
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        lines.append(f"  problems: {len(self.problems)}" if self.problems else "  no problems found")
        lines.extend(f"    {p}" for p in self.problems[:20])
        if len(self.problems) > 20:
            lines.append(f"    ... and {len(self.problems) - 20} more (--json lists every one)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        t = np.asarray(self.target_pixels) if self.target_pixels else np.zeros(0)
        return {
            "root": str(self.root), "layout": self.layout, "splits": {k: len(v) for k, v in self.splits.items()},
            "bad_stems": self.bad_stems,
            "image_sizes": self.image_sizes, "image_modes": self.image_modes,
            "target_pixels": ({"min": int(t.min()), "median": float(np.median(t)), "max": int(t.max())}
                              if t.size else None),
            "empty_masks": self.empty_masks, "non_binary_masks": self.non_binary_masks,
            "warnings": self.warnings, "problems": self.problems,
        }


@dataclass
class SplitSource:
    """Where one split's stems, images and masks are."""

    stems_file: Path | None   # a list file, or None: every image in ``images``
    images: Path
    masks: Path

    def stems(self) -> list[str]:
        if self.stems_file is not None:
            return read_split(self.stems_file)
        return sorted({p.stem for p in self.images.iterdir() if p.suffix.lower() in IMAGE_EXTS})


@dataclass
class Layout:
    """A dataset layout as published: its name, what identified it, and its splits."""

    name: str
    evidence: str
    splits: dict[str, SplitSource]


def _pair(root: Path, a: str, b: str) -> bool:
    return (root / a).is_dir() and (root / b).is_dir()


def _layouts(root: Path) -> list[Layout]:
    """Every known layout that matches ``root`` (the published forms of the field's sets)."""
    found: list[Layout] = []
    if _pair(root, "images", "masks"):
        img, msk = root / "images", root / "masks"
        if (root / "train.txt").is_file() and (root / "test.txt").is_file():
            found.append(Layout("sgem", "images/ masks/ train.txt test.txt",
                                {"train": SplitSource(root / "train.txt", img, msk),
                                 "test": SplitSource(root / "test.txt", img, msk)}))
        idx = root / "img_idx"
        trains, tests = sorted(idx.glob("train_*.txt")), sorted(idx.glob("test_*.txt"))
        if len(trains) == 1 and len(tests) == 1:
            found.append(Layout("BasicIRSTD", f"images/ masks/ img_idx/{trains[0].name} {tests[0].name}",
                                {"train": SplitSource(trains[0], img, msk), "test": SplitSource(tests[0], img, msk)}))
        for sub, train_name in (("50_50", "train.txt"), ("idx_427", "trainval.txt"), ("idx_320", "trainval.txt")):
            if (root / sub / train_name).is_file() and (root / sub / "test.txt").is_file():
                sirst = any(msk.glob("*_pixels0.*"))
                found.append(Layout("SIRST (original)" if sirst else "DNANet repository",
                                    f"images/ masks/{' (<stem>_pixels0 masks)' if sirst else ''} "
                                    f"{sub}/{train_name} {sub}/test.txt",
                                    {"train": SplitSource(root / sub / train_name, img, msk),
                                     "test": SplitSource(root / sub / "test.txt", img, msk)}))
                break
    if _pair(root, "IRSTD1k_Img", "IRSTD1k_Label") and (root / "trainval.txt").is_file() \
            and (root / "test.txt").is_file():
        img, msk = root / "IRSTD1k_Img", root / "IRSTD1k_Label"
        found.append(Layout("IRSTD-1k", "IRSTD1k_Img/ IRSTD1k_Label/ trainval.txt test.txt",
                            {"train": SplitSource(root / "trainval.txt", img, msk),
                             "test": SplitSource(root / "test.txt", img, msk)}))
    for train_dir in ("trainval", "train"):
        if _pair(root / train_dir, "images", "masks") and _pair(root / "test", "images", "masks"):
            found.append(Layout("mmseg-style folders", f"{train_dir}/images|masks test/images|masks",
                                {"train": SplitSource(None, root / train_dir / "images", root / train_dir / "masks"),
                                 "test": SplitSource(None, root / "test" / "images", root / "test" / "masks")}))
            break
    return found


def detect_layout(root: str | Path) -> Layout:
    """The one layout ``root`` is in; an error naming both when two match, or what was
    looked for when none does."""
    root = Path(root)
    found = _layouts(root)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        listed = "; ".join(f"{f.name} ({f.evidence})" for f in found)
        raise DatasetError(root, [f"{root}: {len(found)} layouts match: {listed}. Choose the split lists "
                                  f"explicitly, e.g. --split train=FILE --split test=FILE"])
    if (root / "images").is_dir() or (root / "train.txt").is_file():  # sgem's layout with a part missing
        missing = [f"{root / n}: {what} not found (expected ROOT/{n})" for n, what in
                   (("images", "images folder"), ("masks", "masks folder"), ("train.txt", "split list for 'train'"),
                    ("test.txt", "split list for 'test'")) if not (root / n).exists()]
        if missing:
            raise DatasetError(root, missing)
    raise DatasetError(root, [
        f"{root}: no known dataset layout found; expected one of: images/ masks/ train.txt test.txt (sgem); "
        f"images/ masks/ img_idx/train_NAME.txt test_NAME.txt (BasicIRSTD); images/ masks/ 50_50/train.txt "
        f"test.txt or idx_427/trainval.txt test.txt (DNANet repository, SIRST); IRSTD1k_Img/ IRSTD1k_Label/ "
        f"trainval.txt test.txt (IRSTD-1k); trainval/images|masks test/images|masks (mmseg)"])


def validate_dataset(
    root: str | Path,
    splits: dict[str, str] | None = None,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES,
    check_contents: bool = True,
) -> DatasetReport:
    """Check a dataset before any training. ``splits`` maps split name -> list file
    (relative to ``root``) in sgem's own layout; without it the layout is detected
    (:func:`detect_layout`: sgem, BasicIRSTD, the DNANet repository, SIRST, IRSTD-1k,
    mmseg-style folders) and its train and test splits are checked."""
    from .metrics import connected_components

    root = Path(root)
    report = DatasetReport(root)
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found (a name is looked up as data/{root.name} and "
                               f"${DATA_ENV}/{root.name}; README 'Datasets' says where to get each)")
        return report
    if splits is not None and all(isinstance(v, SplitSource) for v in splits.values()):
        sources = dict(splits)
    elif splits is None and not (images_dir != "images" or masks_dir != "masks"):
        try:
            layout = detect_layout(root)
        except DatasetError as exc:
            report.problems.extend(exc.problems)
            return report
        report.layout = f"{layout.name} ({layout.evidence})"
        sources = layout.splits
    else:
        img_dir, msk_dir = root / images_dir, root / masks_dir
        for d, what in ((img_dir, "images"), (msk_dir, "masks")):
            if not d.is_dir():
                report.problems.append(f"{d}: {what} folder not found (expected ROOT/{d.name}/)")
        if report.problems:
            return report
        splits = splits or {"train": "train.txt", "test": "test.txt"}
        sources = {name: f if isinstance(f, SplitSource) else SplitSource(root / f, img_dir, msk_dir)
                   for name, f in splits.items()}

    seen: dict[str, str] = {}
    for name, source in sources.items():
        path = source.stems_file or source.images
        img_dir, msk_dir = source.images, source.masks
        if source.stems_file is not None and not source.stems_file.is_file():
            report.problems.append(f"{path}: split list for '{name}' not found")
            continue
        if not (img_dir.is_dir() and msk_dir.is_dir()):
            report.problems.append(f"{img_dir if not img_dir.is_dir() else msk_dir}: folder for split '{name}' "
                                   f"not found")
            continue
        stems = source.stems()
        if not stems:
            report.problems.append(f"{path}: split '{name}' is empty (expected one stem per line)")
        counts: dict[str, int] = {}
        for s in stems:
            counts[s] = counts.get(s, 0) + 1
        for s, n in counts.items():
            if n > 1:
                report.problems.append(f"{path}: stem '{s}' listed {n} times")
        samples = []
        for stem in dict.fromkeys(stems):
            if stem in seen:
                report.problems.append(f"{path}: stem '{stem}' is also in split '{seen[stem]}' "
                                       f"(splits must not overlap)")
                continue
            seen[stem] = name
            imgs = image_files(img_dir, stem)
            msks = image_files(msk_dir, stem, mask_suffixes)
            for files, what in ((imgs, "image"), (msks, "mask")):
                if len(files) > 1:
                    report.problems.append(f"{files[0].parent}: {len(files)} files could be the {what} of stem "
                                           f"'{stem}' ({', '.join(f.name for f in files)}); keep one")
            img = imgs[0] if imgs else None
            msk = msks[0] if msks else None
            if img is None:
                report.problems.append(f"{img_dir}/{stem}.*: image for stem '{stem}' (split '{name}') not found")
            if msk is None:
                tried = ", ".join(f"'{stem}{s}.png'" for s in mask_suffixes)
                report.problems.append(f"{msk_dir}: mask for stem '{stem}' (split '{name}') not found "
                                       f"(tried {tried} and other image extensions)")
            if img is not None and msk is not None:
                samples.append(Sample(stem, img, msk))
        report.splits[name] = samples

    if check_contents:
        non_binary: list[str] = []
        for split_name, samples in report.splits.items():
            for s in samples:
                bad = report.bad_stems.setdefault(split_name, [])
                try:  # fully decoded by the reader the training uses: truncated files fail here
                    raw, _, mode = read_raw(s.image)
                except ImageReadError as exc:
                    report.problems.append(str(exc))
                    bad.append(s.stem)
                    continue
                img_size = (raw.shape[1], raw.shape[0])
                try:
                    mask, strict = read_mask(s.mask)
                except ImageReadError as exc:
                    report.problems.append(str(exc).replace("as an image", "as a mask"))
                    bad.append(s.stem)
                    continue
                if mask.shape[::-1] != img_size:
                    report.problems.append(
                        f"{s.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {s.image.name} is "
                        f"{img_size[0]}x{img_size[1]} (width x height; they must agree)")
                    bad.append(s.stem)
                    continue
                if not strict:
                    non_binary.append(s.mask.name)
                key = f"{img_size[0]}x{img_size[1]}"
                report.image_sizes[key] = report.image_sizes.get(key, 0) + 1
                report.image_modes[mode] = report.image_modes.get(mode, 0) + 1
                n = int(mask.sum())
                report.target_pixels.append(n)
                report.empty_masks += n == 0
                report.targets_per_image.append(len(connected_components(mask).areas))
        report.non_binary_masks = len(non_binary)
        if non_binary:
            report.warnings.append(
                f"{len(non_binary)} mask(s) are not strictly binary and were thresholded at half the full "
                f"scale (> 127 for 8-bit) "
                f"(e.g. {', '.join(non_binary[:3])})")
    return report


def split_source(root: str | Path, split: str, split_file: str | None = None) -> SplitSource:
    """Where split ``split`` of ``root`` is: an explicit list file (a path that exists as
    given, else relative to ``root``; with images/ and masks/ of ``root``), ``<split>.txt``
    in sgem's layout, else the detected layout's train or test
    split (``trainval`` is the train split)."""
    root = Path(root)
    if split_file is not None:  # a path as given (from here), else relative to the dataset
        listed = Path(split_file) if Path(split_file).is_file() else root / split_file
        images, masks = root / "images", root / "masks"
        if not images.is_dir():  # another layout's folders (IRSTD1k_Img/, trainval/images/, ...)
            try:
                layout = detect_layout(root)
                src = layout.splits.get({"trainval": "train"}.get(split, split)) or next(iter(layout.splits.values()))
                images, masks = src.images, src.masks
            except DatasetError:
                pass
        return SplitSource(listed, images, masks)
    if (root / f"{split}.txt").is_file() and (root / "images").is_dir():
        return SplitSource(root / f"{split}.txt", root / "images", root / "masks")
    layout = detect_layout(root)
    key = {"trainval": "train"}.get(split, split)
    if key not in layout.splits:
        raise ValueError(f"{root}: split '{split}' not found; the {layout.name} layout has "
                         f"{', '.join(layout.splits)} (give a list file with split_file / --split NAME=FILE)")
    return layout.splits[key]


def load_split(root: str | Path, split: str, *, split_file: str | None = None,
               mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Validate one split and load it: (stems, images float32 [0,1], masks bool). The
    split is found by :func:`split_source` (any known layout)."""
    report = validate_dataset(root, {split: split_source(root, split, split_file)}, mask_suffixes=mask_suffixes)
    report.raise_if_bad()
    for w in report.warnings:
        warnings.warn(f"{root}: {w}", stacklevel=2)
    samples = report.splits[split]
    return ([s.stem for s in samples], [load_image(s.image) for s in samples],
            [load_mask(s.mask) for s in samples])


def image_stats(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean and standard deviation over all pixels of a list of images (float64 sums)."""
    n = sum(im.size for im in images)
    if n == 0:
        raise ValueError("cannot compute statistics of an empty image list")
    mean = sum(float(im.sum(dtype=np.float64)) for im in images) / n
    var = sum(float(((im.astype(np.float64) - mean) ** 2).sum()) for im in images) / n
    return mean, max(var, 1e-12) ** 0.5


def to_tensors(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], device: torch.device | str = "cpu"
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Images as (1, H, W) float32 and masks as (1, H, W) uint8 tensors on ``device``."""
    imgs = [torch.from_numpy(np.ascontiguousarray(im)).unsqueeze(0).to(device) for im in images]
    msks = [torch.from_numpy(np.ascontiguousarray(m.astype(np.uint8))).unsqueeze(0).to(device) for m in masks]
    return imgs, msks


def dataset_fingerprint(root: str | Path, splits: Sequence[str] = ("train.txt", "test.txt")) -> str:
    """sha256 over the split lists and every image and mask (names and bytes), so that a
    pipeline notices any change in a dataset that lives outside the repository."""
    import hashlib

    root = Path(root)
    h = hashlib.sha256()
    files = [root / s for s in splits if (root / s).is_file()]
    for sub in ("images", "masks"):
        if (root / sub).is_dir():
            files.extend(sorted(p for p in (root / sub).iterdir() if p.is_file()))
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- canonical copies

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"


def canonical_manifest(root: str | Path) -> Path | None:
    """The shipped manifest named like the dataset folder (e.g. NUDT-SIRST), if any."""
    p = MANIFEST_DIR / f"{Path(root).resolve().name}.sha256"
    return p if p.is_file() else None


def compare_with_manifest(root: str | Path, manifest: str | Path) -> dict:
    """Every file the manifest lists, checked in ``root``: images and masks by sha256,
    split lists by their stems (the sha256 of the stems joined by LF); plus the files
    ``root`` has in the listed folders that the manifest does not list (hidden files
    such as ``.DS_Store`` aside). A ``# covers:``
    line says what part of the release the manifest covers. Returns {identical, checked,
    covers, differing, missing, extra}."""
    import hashlib

    root = Path(root)
    expected: dict[str, str] = {}
    covers = "every file of the release"
    for line in Path(manifest).read_text().splitlines():
        if line.startswith("# covers:"):
            covers = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            digest, name = line.split(None, 1)
            expected[name.strip()] = digest
    differing, missing = [], []
    for name, digest in expected.items():
        p = root / name
        if not p.is_file():
            missing.append(name)
        elif name.endswith(".txt"):
            # a split list: the same stems in the same order, whatever the line endings
            text = "\n".join(read_split(p)) + "\n"
            if hashlib.sha256(text.encode()).hexdigest() != digest:
                differing.append(name)
        elif hashlib.sha256(p.read_bytes()).hexdigest() != digest:
            differing.append(name)
    listed_dirs = {n.split("/", 1)[0] for n in expected if "/" in n}
    # hidden files (.DS_Store, ._<name> from archives made on a Mac) are not part of a dataset
    extra = sorted(str(f.relative_to(root)) for d in listed_dirs if (root / d).is_dir()
                   for f in (root / d).rglob("*") if f.is_file() and str(f.relative_to(root)) not in expected
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    return {"manifest": str(manifest), "checked": len(expected), "covers": covers,
            "identical": not (differing or missing or extra),
            "differing": differing, "missing": missing, "extra": extra}
