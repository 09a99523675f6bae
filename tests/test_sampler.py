"""The vectorised batch sampler draws exactly the crops and flips of the per-sample loop
it replaced, for the same generator state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgem.train import DeviceData


def reference_batch(images, masks, idx, crop, gen, augment, pad_value):
    """The previous per-sample implementation, kept verbatim as the specification."""
    r = torch.randint(0, 2**31 - 1, (len(idx), 5), generator=gen).tolist()
    xs, ys = [], []
    for i, (ry, rx, f1, f2, f3) in zip(idx, r):
        img, msk = images[i], masks[i]
        h, w = img.shape[-2:]
        if h < crop or w < crop:
            ph, pw = max(0, crop - h), max(0, crop - w)
            img = torch.nn.functional.pad(img, (0, pw, 0, ph), value=pad_value)
            msk = torch.nn.functional.pad(msk, (0, pw, 0, ph), value=0)
            h, w = img.shape[-2:]
        oy, ox = ry % (h - crop + 1), rx % (w - crop + 1)
        img, msk = img[:, oy:oy + crop, ox:ox + crop], msk[:, oy:oy + crop, ox:ox + crop]
        if augment == "flip":
            if f1 % 2:
                img, msk = img.flip(-1), msk.flip(-1)
            if f2 % 2:
                img, msk = img.flip(-2), msk.flip(-2)
            if f3 % 2:
                img, msk = img.transpose(-1, -2), msk.transpose(-1, -2)
        xs.append(img)
        ys.append(msk)
    return torch.stack(xs), torch.stack(ys).float()


def _split(sizes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.random(s, dtype=np.float32) for s in sizes]
    masks = [rng.random(s) > 0.7 for s in sizes]
    return images, masks


@pytest.mark.parametrize("augment", ["flip", "none"])
@pytest.mark.parametrize("sizes,crop", [
    ([(32, 32)] * 6, 32),                                   # crop = image: offsets 0, flips only
    ([(48, 40), (40, 48), (64, 64), (33, 70), (40, 40)], 32),  # mixed sizes, all larger
    ([(20, 50), (50, 20), (16, 16), (48, 48)], 32),           # smaller than the crop: padded
])
def test_vectorised_batch_equals_per_sample_loop(sizes, crop, augment):
    images, masks = _split(sizes)
    data = DeviceData(images, masks, torch.device("cpu"))
    ref_imgs = [torch.from_numpy(im).unsqueeze(0) for im in images]
    ref_msks = [torch.from_numpy(m.astype(np.uint8)).unsqueeze(0) for m in masks]
    for epoch in range(4):
        g1 = torch.Generator().manual_seed(100 + epoch)
        g2 = torch.Generator().manual_seed(100 + epoch)
        perm = torch.randperm(len(images), generator=g1).tolist()
        assert perm == torch.randperm(len(images), generator=g2).tolist()
        for s in range(0, len(perm), 3):
            idx = perm[s:s + 3]
            x, y = data.batch(idx, crop, g1, augment, pad_value=0.25)
            rx, ry = reference_batch(ref_imgs, ref_msks, idx, crop, g2, augment, pad_value=0.25)
            assert x.dtype == rx.dtype and y.dtype == ry.dtype
            assert torch.equal(x, rx)
            assert torch.equal(y, ry)
    # the generators were consumed identically
    assert torch.equal(g1.get_state(), g2.get_state())


def test_flips_and_transposes_all_occur():
    """Guards against a sampler that ignores the flip bits (it would still match for crop=image
    if both implementations ignored them; here the reference decides)."""
    images, masks = _split([(16, 16)] * 4, seed=3)
    data = DeviceData(images, masks, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        x, _ = data.batch([0], 16, g, "flip", pad_value=0.0)
        base = torch.from_numpy(images[0])
        for name, t in {"id": base, "h": base.flip(-1), "v": base.flip(-2), "t": base.T,
                        "hv": base.flip(-1).flip(-2)}.items():
            if torch.equal(x[0, 0], t):
                seen.add(name)
    assert {"id", "h", "v", "t"} <= seen


def _one_target_each(sizes, seed=0):
    """Images with one target pixel each (at a random place), the last one with none."""
    rng = np.random.default_rng(seed)
    images = [rng.random(s, dtype=np.float32) for s in sizes]
    masks, where = [], []
    for i, (h, w) in enumerate(sizes):
        m = np.zeros((h, w), dtype=bool)
        if i < len(sizes) - 1:
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            m[y, x] = True
            where.append((y, x))
        masks.append(m)
    return images, masks, where


def test_crops_placed_over_targets_contain_one_at_any_position():
    """crop_targets=1: every crop of an image with targets holds a target pixel, at
    positions spread over the whole crop (not always centred); an image without targets
    still gives an ordinary crop."""
    sizes = [(64, 64), (80, 48), (20, 40), (64, 64)]   # the third is smaller than the crop: padded
    images, masks, _ = _one_target_each(sizes)
    masks[0][:] = False
    masks[0][30, 33] = True         # central: every one of the 32 x 32 places in the crop is possible
    data = DeviceData(images, masks, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    positions = set()
    for _ in range(150):
        x, y = data.batch([0, 1, 2, 3], 32, g, "none", pad_value=0.0, crop_targets=1.0)
        assert y[:3].flatten(1).sum(1).tolist() == [1.0, 1.0, 1.0] and y[3].sum() == 0
        positions.add(tuple(torch.nonzero(y[0, 0])[0].tolist()))
    assert len(positions) > 100   # of 32 x 32 possible places


def test_crop_targets_is_a_probability():
    """crop_targets=0.5 places about half the crops over a target; the others are the
    uniform crops, which here rarely hold the single target pixel."""
    images, masks, _ = _one_target_each([(128, 128), (8, 8)])
    data = DeviceData(images, masks, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    hits = [float(data.batch([0] * 50, 16, g, "flip", pad_value=0.0, crop_targets=0.5)[1].sum()) for _ in range(40)]
    share = sum(hits) / 2000
    uniform = (16 / 113) ** 2 * 0.5     # at most: the pixel inside a uniform crop
    assert 0.45 < share < 0.5 + uniform + 0.05


def test_crop_targets_outside_0_1_is_refused():
    from sgem.train import TrainConfig

    with pytest.raises(ValueError, match=r"crop_targets=1.5; expected a probability in \[0, 1\]"):
        TrainConfig(data_root="x", crop_targets=1.5).validate()


def test_nonempty_batches_moves_one_crop_of_an_empty_batch_over_a_target():
    """nonempty_batches: every batch holds a target pixel when one of its images has one;
    a batch whose uniform crops are all background gets exactly one crop replaced (the
    others as drawn), and a batch that already holds a target is the one drawn without
    the option (same generator state)."""
    images, masks, _ = _one_target_each([(128, 128)] * 3 + [(64, 64)])   # the last has no target
    data = DeviceData(images, masks, torch.device("cpu"))
    moved = kept = 0
    for seed in range(60):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        x, y = data.batch([0, 1, 2, 3], 16, g1, "flip", pad_value=0.0, nonempty_batches=True)
        x0, y0 = data.batch([0, 1, 2, 3], 16, g2, "flip", pad_value=0.0)
        assert y.sum() >= 1
        same = [bool(torch.equal(x[i], x0[i]) and torch.equal(y[i], y0[i])) for i in range(4)]
        if y0.sum() == 0:
            moved += 1
            assert sum(same) == 3 and same[3] and y.sum() == 1   # one crop of an image with a target
        else:
            kept += 1
            assert all(same)
    assert moved > 40 and kept > 0          # uniform 16-crops of a 128 image rarely hold its one pixel


def test_nonempty_batches_leaves_a_batch_of_images_without_targets_empty():
    images, masks, _ = _one_target_each([(64, 64)] * 2)
    masks = [np.zeros_like(m) for m in masks]
    data = DeviceData(images, masks, torch.device("cpu"))
    x, y = data.batch([0, 1], 32, torch.Generator().manual_seed(0), "flip", pad_value=0.0, nonempty_batches=True)
    assert x.shape == (2, 1, 32, 32) and y.sum() == 0


def _distinct(sizes, seed=0):
    """Images whose pixels all differ (a crop pixel names its image pixel), no targets."""
    rng = np.random.default_rng(seed)
    images = [rng.permutation(h * w).reshape(h, w).astype(np.float32) / (h * w) + i for i, (h, w) in enumerate(sizes)]
    return images, [np.zeros(s, dtype=bool) for s in sizes]


def test_false_alarm_is_recorded_at_its_image_pixel_under_every_flip():
    """record_false_alarms maps the crop pixel of highest positive logit back through the
    crop's offset, flips and transpose to its own image: the recorded pixel of the image
    holds the value the crop showed there. A crop without a false alarm clears a record
    inside it and keeps one outside it."""
    sizes = [(40, 40), (48, 36), (64, 64)]
    images, masks = _distinct(sizes)
    data = DeviceData(images, masks, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(1)
    flips = set()
    for _ in range(60):
        x, y = data.batch([0, 1, 2], 16, g, "flip", pad_value=0.0)
        sel, oy, ox, flip, crop = data._last
        flips.add(tuple(flip[0].tolist()))
        logits = torch.full((3, 1, 16, 16), -5.0)
        want = []
        for b in range(2):
            i, j = (int(v) for v in rng.integers(0, 16, 2))
            logits[b, 0, i, j] = 3.0
            logits[b, 0, (i + 5) % 16, (j + 7) % 16] = 1.0      # a weaker false alarm: not the one recorded
            want.append(float(x[b, 0, i, j]))
        data.false_alarms[2] = torch.tensor([int(oy[2]) + 3, int(ox[2]) + 4])  # inside crop 2: cleared
        data.record_false_alarms(logits, y, epoch=1)
        for b in range(2):
            r, c = data.false_alarms[b].tolist()
            assert images[b][r, c] == want[b]
        assert data.false_alarms[2].tolist() == [-1, -1]
        outside = [int(oy[2]) - 1 if oy[2] > 0 else int(oy[2]) + 16, int(ox[2])]   # next to crop 2: kept
        data.false_alarms[2] = torch.tensor(outside)
        data.record_false_alarms(torch.full((3, 1, 16, 16), -5.0), y, epoch=2)
        assert data.false_alarms[2].tolist() == outside
    assert len(flips) == 8          # every combination of the three flips was checked


def test_false_alarms_next_to_a_target_are_not_recorded():
    """A positive logit within ``margin`` pixels of a target pixel is a segmentation error at
    the target's edge, not a false alarm; a farther one is recorded."""
    images, masks = _distinct([(32, 32)])
    masks[0][10, 10] = True
    data = DeviceData(images, masks, torch.device("cpu"))
    x, y = data.batch([0], 32, torch.Generator().manual_seed(0), "none", pad_value=0.0)
    logits = torch.full((1, 1, 32, 32), -5.0)
    logits[0, 0, 10, 10] = 9.0          # the target itself
    logits[0, 0, 13, 12] = 8.0          # 3 pixels away: edge
    data.record_false_alarms(logits, y, epoch=1)
    assert data.false_alarms[0].tolist() == [-1, -1]
    logits[0, 0, 14, 10] = 0.5          # 4 pixels away: a false alarm
    data.record_false_alarms(logits, y, epoch=1)
    assert data.false_alarms[0].tolist() == [14, 10]


def test_crops_are_placed_over_recorded_false_alarms():
    """crop_false_alarms=1: every crop of an image with a record holds the recorded pixel,
    at positions spread over the crop; an image without a record gets the uniform crop of
    a run without the option (same offsets and flips)."""
    images, masks = _distinct([(64, 64), (64, 64)])
    data = DeviceData(images, masks, torch.device("cpu"))
    data.false_alarms[0] = torch.tensor([30, 33])
    positions = set()
    for seed in range(150):
        x, _ = data.batch([0, 1], 16, torch.Generator().manual_seed(seed), "flip", pad_value=0.0,
                          crop_false_alarms=1.0)
        hit = torch.nonzero(x[0, 0] == images[0][30, 33])
        assert len(hit) == 1
        positions.add(tuple(hit[0].tolist()))
        x0, _ = data.batch([0, 1], 16, torch.Generator().manual_seed(seed), "flip", pad_value=0.0)
        assert torch.equal(x[1], x0[1])
    assert len(positions) > 150 * 0.6
    assert int(data.false_alarm_crops) == 150


def test_crop_false_alarms_is_a_probability():
    images, masks = _distinct([(128, 128)])
    data = DeviceData(images, masks, torch.device("cpu"))
    data.false_alarms[0] = torch.tensor([5, 100])
    g = torch.Generator().manual_seed(2)
    hits = sum(int((data.batch([0] * 50, 16, g, "none", pad_value=0.0, crop_false_alarms=0.3)[0]
                    == images[0][5, 100]).sum()) for _ in range(40))
    uniform = (16 / 113) ** 2 * 0.7
    assert 0.25 < hits / 2000 < 0.3 + uniform + 0.05
    from sgem.train import TrainConfig

    with pytest.raises(ValueError, match=r"crop_false_alarms=-0.1; expected a probability in \[0, 1\]"):
        TrainConfig(data_root="x", crop_false_alarms=-0.1).validate()


def _merge_worker(rank, world, store_file, out_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    try:
        images, masks = _distinct([(32, 32)] * 4)
        data = DeviceData(images, masks, torch.device("cpu"))
        # after an earlier merge both ranks hold image 0 = (1, 2) and image 1 = (3, 4) (epoch 2);
        # this epoch rank 0 saw image 2 (a record), rank 1 saw image 0 (cleared) and 3 (a record),
        # nobody saw image 1
        data.false_alarms[0] = torch.tensor([1, 2])
        data.false_alarms[1] = torch.tensor([3, 4])
        data.false_alarm_epoch[:2] = 2
        if rank == 0:
            data.false_alarms[2] = torch.tensor([5, 6])
            data.false_alarm_epoch[2] = 3
        else:
            data.false_alarms[0] = torch.tensor([-1, -1])
            data.false_alarm_epoch[0] = 3
            data.false_alarms[3] = torch.tensor([7, 8])
            data.false_alarm_epoch[3] = 3
        data.merge_false_alarms()
        torch.save({"yx": data.false_alarms, "epoch": data.false_alarm_epoch}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_merging_false_alarm_records_of_two_processes(tmp_path):
    """Each image takes the record of the process that saw it last; an image that no
    process saw since the last merge keeps the record both hold (not their sum)."""
    import torch.multiprocessing as mp

    mp.spawn(_merge_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        got = torch.load(f"{tmp_path / 'out'}.{rank}")
        assert got["yx"].tolist() == [[-1, -1], [3, 4], [5, 6], [7, 8]], rank
        assert got["epoch"].tolist() == [3, 2, 3, 3]
