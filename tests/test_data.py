"""Data discovery and decoding (tlkit.data)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from synthetic import (
    save_bomb, save_exif_rotated, save_mode, save_not_an_image, save_truncated, save_zero_bytes,
)
from tlkit.data import discover, load_rgb
from tlkit.errors import BadImage, DataError
from tlkit.splits import ALL_SPLIT


def test_split_layout_sorts_classes_and_shares_indices(tmp_path):
    for split, classes in {"train": ["bees", "ants", "wasps"], "val": ["bees", "ants"]}.items():
        for c in classes:
            save_mode(tmp_path / split / c / "a.png", "RGB")
    index = discover(tmp_path)
    assert index.class_names == ["ants", "bees", "wasps"]
    assert index.splits == ["train", "val"]
    by_path = {it.path: it for it in index.items}
    assert index.label(by_path["val/bees/a.png"]) == index.label(by_path["train/bees/a.png"]) == 1
    assert index.label(by_path["train/wasps/a.png"]) == 2  # present in train only: fine


def test_flat_layout_is_split_all(tmp_path):
    save_mode(tmp_path / "cats" / "x.jpg", "RGB")
    save_mode(tmp_path / "dogs" / "y.jpg", "RGB")
    index = discover(tmp_path)
    assert index.splits == [ALL_SPLIT]
    assert [it.path for it in index.items] == ["cats/x.jpg", "dogs/y.jpg"]


def test_extensions_any_case_hidden_and_other_files_ignored(tmp_path):
    c = tmp_path / "train" / "c"
    for name in ["a.JPG", "b.jpeg", "c.PNG", "d.gif", "e.bmp", "f.webp", "g.tif", "h.TIFF"]:
        save_mode(c / name, "RGB")
    (c / "notes.txt").write_text("x")
    (c / "model.h5").write_bytes(b"x")
    save_mode(c / ".hidden.jpg", "RGB")
    save_mode(c / ".cache" / "z.jpg", "RGB")
    save_mode(tmp_path / "train" / ".secret" / "z.jpg", "RGB")
    index = discover(tmp_path)
    assert sorted(Path_(it.path).name for it in index.items) == ["a.JPG", "b.jpeg", "c.PNG", "d.gif", "e.bmp", "f.webp", "g.tif", "h.TIFF"]
    assert index.class_names == ["c"]


def Path_(p):
    from pathlib import PurePosixPath

    return PurePosixPath(p)


def test_symlinks_followed_without_loops(tmp_path):
    real = tmp_path / "elsewhere"
    save_mode(real / "r.png", "RGB")
    cls = tmp_path / "data" / "train" / "c"
    save_mode(cls / "own.png", "RGB")
    os.symlink(real, cls / "linked")
    os.symlink(cls, cls / "loop")  # would recurse forever if followed naively
    index = discover(tmp_path / "data")
    assert [it.path for it in index.items] == ["train/c/linked/r.png", "train/c/own.png"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "no images found"),
])
def test_missing_or_empty_data_folder(tmp_path, setup, message):
    with pytest.raises(DataError, match=message):
        discover(setup(tmp_path))


@pytest.mark.parametrize("mode, ext", [
    ("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("I;16", "png"), ("RGB", "webp"),
    ("1", "bmp"), ("RGB", "tiff"), ("P", "gif"),
])
def test_every_mode_becomes_rgb(tmp_path, mode, ext):
    path = save_mode(tmp_path / f"x.{ext}", mode)
    with Image.open(path) as raw:
        assert raw.mode.startswith(mode[0])  # the file really is in that mode
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (64, 48)
    arr = np.asarray(im)
    assert arr.std() > 5  # content survived the conversion (no all-black or clipped image)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    path = save_mode(tmp_path / "deep.png", "I;16")
    arr = np.asarray(load_rgb(path))
    grey = np.asarray(Image.open(tmp_path / "deep.png"), dtype=np.float64)
    assert grey.max() > 255  # really 16-bit data
    assert 0 <= arr.min() and arr.max() == 255 and len(np.unique(arr[..., 0])) > 50


def test_exif_orientation_applied(tmp_path):
    path, upright = save_exif_rotated(tmp_path / "rot.jpg")
    with Image.open(path) as raw:
        assert raw.size == (upright.shape[0], upright.shape[1])  # stored sideways
    im = np.asarray(load_rgb(path), dtype=np.int16)
    assert im.shape == upright.shape
    assert np.abs(im - upright).mean() < 8  # JPEG noise only, not a rotated picture


@pytest.mark.parametrize("maker, reason", [
    (save_truncated, "truncated"),
    (save_zero_bytes, "empty file"),
    (save_not_an_image, "not an image"),
    (save_bomb, "decompression bomb"),
])
def test_bad_files_raise_badimage_with_reason(tmp_path, maker, reason):
    path = maker(tmp_path / "bad.png")
    with pytest.raises(BadImage, match=reason):
        load_rgb(path)


def test_max_pixels_limit_is_configurable(tmp_path):
    path = save_mode(tmp_path / "big.png", "RGB", size=(300, 200))
    assert load_rgb(path, max_pixels=60_000).size == (300, 200)
    with pytest.raises(BadImage, match="decompression bomb"):
        load_rgb(path, max_pixels=59_999)


def test_huge_and_tiny_images_decode(tmp_path):
    assert load_rgb(save_mode(tmp_path / "tiny.png", "RGB", size=(1, 1))).size == (1, 1)
    assert load_rgb(save_mode(tmp_path / "huge.jpg", "RGB", size=(4000, 3000))).size == (4000, 3000)


def test_the_workers_pixels_normalised_in_batches_equal_the_eval_transform(hymenoptera, tmp_path):
    """The embedding's two halves (uint8 pixels in the workers, batched normalisation after) give
    exactly the tensors of torchvision's per-image transform (TransformSpec.build), on real photos of
    every size in the set (the GIF too) and on images in other modes, tiny and tall ones."""
    import torch

    from tlkit.data.reader import read_batches
    from tlkit.data.transforms import TransformSpec

    files = [str(p) for p in sorted((hymenoptera / "train" / "ants").iterdir())[:40]]
    files += [str(save_mode(tmp_path / f"m{i}.{ext}", mode, size=size)) for i, (mode, ext, size) in enumerate([
        ("L", "png", (64, 48)), ("P", "gif", (300, 300)), ("CMYK", "jpg", (500, 333)), ("RGBA", "png", (1, 1)),
        ("RGB", "png", (30, 900))])]
    for spec in (TransformSpec(), TransformSpec(resize=160, crop=128, interpolation="bicubic")):
        reference = torch.stack([spec.build()(load_rgb(f)) for f in files])
        batches = list(read_batches(files, spec, batch_size=8, workers=0, max_pixels=None))
        assert [i for b in batches for i in b.indices] == list(range(len(files)))
        got = torch.cat([b.images for b in batches])
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, reference)


def test_draft_decodes_large_jpegs_smaller_but_never_below_the_target(tmp_path):
    """load_rgb(draft=N): a JPEG at least twice N on both sides comes out at a DCT scale of 1/2..1/8 that
    keeps both sides >= N; smaller JPEGs and other formats come out whole, exactly as without draft."""
    big = save_mode(tmp_path / "big.jpg", "RGB", size=(2400, 1100))
    im = load_rgb(big, draft=256)
    assert im.size == (600, 275)  # 1/4: 1/8 would make the short side 138 < 256
    assert load_rgb(big).size == (2400, 1100)
    for name, size in (("small.jpg", (500, 375)), ("big.png", (2400, 1100))):
        path = save_mode(tmp_path / name, "RGB", size=size)
        assert np.array_equal(np.asarray(load_rgb(path, draft=256)), np.asarray(load_rgb(path)))
    rotated, upright = save_exif_rotated(tmp_path / "rotated.jpg", size=(1200, 600))  # stored 600 x 1200
    assert load_rgb(rotated).size == (1200, 600)
    assert load_rgb(rotated, draft=256).size == (600, 300)  # 1/2 of the stored image, then turned upright


def test_every_image_pass_reports_bad_files_as_entries_and_keeps_the_good_ones(tmp_path):
    """One dataset for every pass over image files (embed's reader, --strict's check, predict, the scratch
    baseline's decode pass): a bad file is an entry with its reason, in place, never an exception."""
    from tlkit.data.reader import DecodedFiles, check_files, read_batches
    from tlkit.data.transforms import TransformSpec

    good = save_mode(tmp_path / "good.png", "RGB", size=(40, 30))
    files = [str(good), str(save_zero_bytes(tmp_path / "empty.jpg")), str(save_not_an_image(tmp_path / "text.png")),
             str(good)]
    decoded = DecodedFiles(files, None, convert=np.asarray)
    assert len(decoded) == 4
    items = [decoded[i] for i in range(4)]
    assert [(i, err) for i, _, err in items] == [
        (0, None), (1, "empty file (0 bytes)"), (2, "not an image PIL can read"), (3, None)]
    assert np.array_equal(items[0][1], np.asarray(load_rgb(good))) and items[1][1] is None
    assert DecodedFiles(files, None)[0] == (0, None, None)  # no convert: a check only
    assert check_files([(f, f"shown-{i}") for i, f in enumerate(files)], workers=0, max_pixels=None) == [
        ("shown-1", "empty file (0 bytes)"), ("shown-2", "not an image PIL can read")]
    spec = TransformSpec(resize=32, crop=24)
    batches = list(read_batches(files, spec, batch_size=3, workers=0, max_pixels=None))
    assert [b.indices for b in batches] == [[0], [3]]
    assert [b.errors for b in batches] == [[(1, "empty file (0 bytes)"), (2, "not an image PIL can read")], []]
    assert batches[0].images.shape == (1, 3, 24, 24)
