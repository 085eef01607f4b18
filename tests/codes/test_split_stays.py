"""The split stays put as the data grows: each drawn image's part is a function of the seed and its
own path, on real Caltech-101 images; code sets of earlier versions keep the split they stored."""
import os

import h5py
import numpy as np
from helpers import CALTECH, FAST, needs_caltech

from pipeline.codes import generate_codes
from pipeline.data import TEST, TRAIN

pytestmark = needs_caltech


def split_of(path) -> dict:
    with h5py.File(path, "r") as f:
        return dict(zip(f["paths"].asstr()[()], f["split"][()].tolist()))


def link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def ten_classes(root, per_class=30):
    classes = sorted(p.name for p in CALTECH.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")[:10]
    for c in classes:
        for f in sorted((CALTECH / c).iterdir())[:per_class]:
            link(f, root / c / f.name)
    return classes


def test_adding_and_removing_images_moves_no_other_image(tmp_path):
    data = tmp_path / "data"
    classes = ten_classes(data)
    before = split_of(generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0])
    parts = np.array(list(before.values()))
    assert 0.10 <= (parts == TEST).mean() <= 0.20
    for c in classes:
        mine = [s for p, s in before.items() if p.startswith(c + "/")]
        assert TRAIN in mine and TEST in mine, c
    for c, n in ((classes[0], 5), (classes[1], 4)):  # 9 images added to two classes
        for f in sorted((CALTECH / c).iterdir())[30:30 + n]:
            link(f, data / c / f.name)
    removed = sorted((data / classes[2]).iterdir())[:2]  # 2 removed from a third
    for f in removed:
        f.unlink()
    file = generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0]
    after = split_of(file)
    assert len(after) == 300 + 9 - 2
    moved = [p for p in after if p in before and after[p] != before[p]]
    assert moved == []
    fresh = split_of(generate_codes(data, cache_dir=tmp_path / "fresh", **FAST)[0])  # a fresh build agrees
    assert fresh == after
    renamed = tmp_path / "renamed"  # and the folder's name or place changes nothing
    data.rename(renamed)
    assert split_of(generate_codes(renamed, cache_dir=tmp_path / "other", **FAST)[0]) == after


def test_a_code_set_of_an_earlier_version_keeps_its_split(tmp_path, logs):
    data = tmp_path / "data"
    classes = ten_classes(data, per_class=12)
    file = generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0]
    hashed = split_of(file)
    with h5py.File(file, "r+") as f:  # as an earlier version left it: another draw, no split_method
        old = f["split"][()]
        f["split"][...] = np.where(old == TEST, TRAIN, np.where(old == TRAIN, TEST, old))
        del f.attrs["split_method"]
    stored = split_of(file)
    assert stored != hashed
    for f in sorted((CALTECH / classes[0]).iterdir())[12:15]:
        link(f, data / classes[0] / f.name)
    after = split_of(generate_codes(data, cache_dir=tmp_path / "cache", **FAST)[0])
    assert {p: after[p] for p in stored} == stored  # never redrawn silently
    assert any("split by an earlier version" in line for line in logs)
    new = [p for p in after if p not in stored]
    assert len(new) == 3 and all(after[p] == hashed.get(p, after[p]) for p in new)
    redrawn = split_of(generate_codes(data, cache_dir=tmp_path / "cache", resplit=True, **FAST)[0])
    fresh = split_of(generate_codes(data, cache_dir=tmp_path / "fresh", **FAST)[0])
    assert redrawn == fresh and redrawn != after  # --resplit: every image by its path
