import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.data import (
    TEST,
    TRAIN,
    VAL,
    ImageError,
    cut_split,
    fingerprint,
    load_image,
    parse_split,
    scan,
    stratified_split,
    walk_images,
)
from pipeline.errors import UserError


def test_scan_finds_images_recursively_any_case_and_ignores_other_files(images):
    (images / "class0" / "notes.txt").write_text("not an image")
    ds = scan(images)
    assert ds.class_names == ["class0", "class1", "class2"]
    assert len(ds) == 36 and list(ds.counts()) == [12, 12, 12]
    assert any(p.endswith(".JPG") for p in ds.paths) and any("/sub/" in p for p in ds.paths)
    assert ds.skipped == {".txt": 1}
    assert ds.paths == sorted(ds.paths)


def test_scan_exclude_and_empty_classes(images):
    (images / "empty").mkdir()
    ds = scan(images, exclude=["class1"])
    assert ds.class_names == ["class0", "class2"] and ds.empty_classes == ("empty",)
    with pytest.raises(UserError, match="not in"):
        scan(images, exclude=["nope"])


@pytest.mark.parametrize("setup,msg", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no class sub-folders"),
    (lambda p: (p / "a").mkdir(parents=True), "no images"),
])
def test_scan_bad_folders(tmp_path, setup, msg):
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(UserError, match=msg):
        scan(root)


def test_scan_single_class(images):
    with pytest.raises(UserError, match="only one class"):
        scan(images, exclude=["class1", "class2"])


def test_split_is_stratified_deterministic_and_seed_dependent():
    labels = np.repeat(np.arange(5), [10, 20, 40, 3, 4000])
    paths = [f"c{l}/img{i}.jpg" for i, l in enumerate(labels)]
    a = stratified_split(paths, labels, (0.7, 0.15, 0.15), seed=1)
    assert np.array_equal(a, stratified_split(paths, labels, (0.7, 0.15, 0.15), seed=1))
    assert not np.array_equal(a, stratified_split(paths, labels, (0.7, 0.15, 0.15), seed=2))
    for c in range(5):
        part = a[labels == c]
        assert (part == TRAIN).sum() >= 1 and (part == TEST).sum() >= 1
    big = a[labels == 4]  # the shares are each image's chance: close to them over many images
    assert abs((big == TEST).mean() - 0.15) < 0.02 and abs((big == VAL).mean() - 0.15) < 0.02
    b = stratified_split(paths, labels, parse_split("70/30"), seed=1)
    assert (b == VAL).sum() == 0 and abs((b[labels == 4] == TEST).mean() - 0.3) < 0.03


def test_split_of_an_image_depends_only_on_its_path():
    """Adding, removing or relabelling images moves no other image across train/val/test (a
    tiny class may move its one exception), and the split is the same wherever it is computed."""
    labels = np.repeat(np.arange(10), 30)
    paths = [f"c{l}/img{i:03d}.jpg" for i, l in enumerate(labels)]
    before = dict(zip(paths, stratified_split(paths, labels, (0.7, 0.15, 0.15), seed=0)))
    assert 0.10 <= np.mean([s == TEST for s in before.values()]) <= 0.20
    grown = paths[2:] + [f"c{c}/new{i}.jpg" for c in (3, 7) for i in range(5)]  # 2 removed from c0, 10 added
    grown_labels = np.r_[labels[2:], np.repeat([3, 7], 5)]
    grown_labels[grown.index("c5/img150.jpg")] = 6  # and one relabelled
    after = dict(zip(grown, stratified_split(grown, grown_labels, (0.7, 0.15, 0.15), seed=0)))
    assert [p for p in after if p in before and after[p] != before[p]] == []
    shuffled = np.random.default_rng(0).permutation(len(grown))  # order and company make no difference
    again = stratified_split([grown[i] for i in shuffled], grown_labels[shuffled], (0.7, 0.15, 0.15), seed=0)
    assert all(after[grown[i]] == s for i, s in zip(shuffled, again))


def test_tiny_classes_keep_a_training_and_a_test_image():
    scores = np.array([0.01, 0.02, 0.5, 0.9, 0.95, 0.05])  # class 0: all test; class 1: all train; class 2: one
    labels = np.array([0, 0, 1, 1, 1, 2])
    split = cut_split(scores, labels, (0.7, 0.15, 0.15))
    assert split.tolist() == [TEST, TRAIN, TEST, TRAIN, TRAIN, TRAIN]  # highest to train, lowest to test
    assert cut_split(scores, labels, (0.85, 0.15, 0.0)).tolist() == [VAL, TRAIN, TRAIN, TRAIN, TRAIN, TRAIN]


def test_parse_split():
    assert parse_split("70/15/15") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_split("0.7/0.3") == pytest.approx((0.7, 0.0, 0.3))
    for bad in ("abc", "100/0", "50/-10/60", "1/2/3/4", "80/30", "0.7/0.2/0.2"):
        with pytest.raises(UserError):
            parse_split(bad)


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_load_image_converts_every_mode(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "gray.png": Image.fromarray(np.full((20, 30), 128, np.uint8), "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 0, np.uint8)]), "RGBA"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "16bit.png": Image.fromarray(np.full((20, 30), 65535 // 2, np.uint16)),
        "tiny.bmp": Image.fromarray(rgb[:1, :1]),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "huge.webp": Image.fromarray(np.zeros((1200, 1600, 3), np.uint8)),
    }
    for name, img in cases.items():
        out = load_image(_save(tmp_path / name, img), 24)
        assert out.shape == (24, 24, 3) and out.dtype == np.uint8, name
    assert load_image(tmp_path / "gray.png", 8)[0, 0].tolist() == [128, 128, 128]
    assert load_image(tmp_path / "16bit.png", 8)[0, 0, 0] == pytest.approx(127, abs=1)
    assert load_image(tmp_path / "rgba.png", 8)[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert load_image(tmp_path / "cmyk.jpg", 8)[0, 0, 0] > 150


def test_load_image_rejects_corrupt_and_truncated(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"this is not a jpeg")
    buf = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf)
    (tmp_path / "trunc.jpg").write_bytes(buf.read_bytes()[:500])
    # a 20,000 x 20,000 PNG header: refused before decoding, not decoded into 1.2 GB
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b""))
    for name in ("bad.jpg", "trunc.jpg", "bomb.png"):
        with pytest.raises(ImageError):
            load_image(tmp_path / name, 16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_the_walk_gives_images_in_the_order_of_sorted_paths_however_names_nest(tmp_path):
    """Folders and files whose names sort around "/" ("a" beside "a.b", "a-b", "a b", "a.jpg"),
    nested three deep: the walk sorts each folder by name and puts sub-folders where their names
    fall, which must give the order of sorted Paths (the order of a code set's rows)."""
    names = ["a", "a.b", "a-b", "a b", "ab", "A", "a0", "é", "z"]
    made = []

    def fill(folder, depth):
        for i, name in enumerate(names):
            if depth < 3 and i % 3 == depth % 3:
                fill(folder / name, depth + 1)
            else:
                for ext in (".jpg", ".png"):
                    path = folder / (name + ext)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"")
                    made.append(path.relative_to(tmp_path).as_posix())
    fill(tmp_path, 0)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    paths, skipped, _ = walk_images(tmp_path)
    assert len(paths) == len(made) > 500
    assert paths == sorted(made, key=lambda p: p.replace("/", "\0"))
    assert paths == [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.joinpath(p) for p in made)]
    assert paths != sorted(made)  # (plain text order differs here: the test can tell them apart)
    assert skipped == {".txt": 1}
    sub, _, _ = walk_images(tmp_path, tmp_path / "a")
    assert sub == [p for p in paths if p.startswith("a/")]


def test_a_fingerprint_is_size_and_time_and_minus_one_for_a_link_to_nowhere(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"12345")
    os.utime(image, ns=(1_000_000_123, 2_000_000_456))
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert fingerprint(image) == (5, 2_000_000_456)
    assert fingerprint(str(tmp_path / "gone.jpg")) == (-1, -1)
