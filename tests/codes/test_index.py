"""The index of a code set written a piece at a time: every row maps to its own code, and a
build's commit holds a piece, not the code set."""
import h5py
import numpy as np
import pytest
from helpers import STAGE1_ATTRS, synthetic_folder, write_planned_parts

from pipeline.codes import _commit, parts_dir
from pipeline.codes._commit import IndexWriter
from pipeline.codes._format import FailedImage, Rows, read_index
from pipeline.codes._parts import PartWriter
from pipeline.codes._commit import commit_all
from pipeline.codes._plan import make_plan
from pipeline.data import PathList

SPLIT_ATTRS = {"split_fractions": "[0.7, 0.15, 0.15]", "split_seed": 0, "layout": "{}", "task": "single-label"}


def write_parts(folder, sizes: dict, rng) -> dict:
    """Part files of random codes (3 values); returns each part's codes by file name."""
    codes = {}
    for name, n in sizes.items():
        w = PartWriter(folder, name, 3, "float32", n, dict(STAGE1_ATTRS, code_shape="[3]"))
        c = rng.normal(size=(n, 3)).astype(np.float32)
        w.append(c, [f"{name}/{i}.jpg" for i in range(n)], np.column_stack([np.arange(n) + 100, np.arange(n)]),
                 np.arange(1, n + 1), [])
        w.close("test")
        codes[w.final.name] = c
    return codes


def test_an_index_written_in_pieces_maps_every_row_to_its_code(tmp_path, monkeypatch):
    monkeypatch.setattr(_commit, "CHUNK", 4)  # pieces of 1-6 rows across chunks of 4: partial chunks joined
    monkeypatch.setattr(_commit, "MAX_BLOCKS", 2)  # runs of a part joined in mappings of at most 2
    path = tmp_path / "l-avg.h5"
    rng = np.random.default_rng(0)
    codes = write_parts(parts_dir(path), {"a": 6, "b": 5, "c": 3}, rng)
    a, b, c = (Rows.of_part(f"part-{x}.h5", np.column_stack([np.arange(n) + 7 * k, np.arange(n)]), np.arange(n) + 1)
               for k, (x, n) in enumerate((("a", 6), ("b", 5), ("c", 3))))
    two = Rows(["part-b.h5", "part-a.h5", "part-unused.h5"], np.array([1, 1, 0, 1], np.int32),
               np.array([5, 4, 0, 3], np.int32), np.arange(8).reshape(4, 2), np.array([9, 8, 7, 6], np.uint64))
    # runs of one part with gaps (one mapping, or two beyond MAX_BLOCKS), going back (a new mapping)
    pieces = [two, c.take([2, 0]), b.take(np.array([False, True, True, True, True])), a.take([0, 1, 2]), c.take([1]),
              a.take([0, 2, 3, 5]), a.take([4, 1]), b.take([0, 2, 4])]
    expected = np.concatenate([codes[p.part_names[k]][r] for p in pieces for k, r in zip(p.part, p.row)]).reshape(-1, 3)
    n = len(expected)
    paths = [f"class{i % 2}/img {i}/é{'x' * (i % 5)}.jpg" for i in range(n)]  # non-ASCII, widths apart
    labels, split = rng.integers(0, 2, n), rng.integers(0, 3, n)
    width = PathList.of(paths).max_bytes()
    with IndexWriter(path, n_rows=n, dim=3, dtype="float32", path_width=width, labels_shape=()) as writer:
        at = 0
        for p in pieces:
            writer.add(p, PathList.of(paths[at:at + len(p)]), labels[at:at + len(p)], split[at:at + len(p)])
            at += len(p)
        writer.close(["class0", "class1"], [FailedImage("bad.jpg", "unreadable", (1, 2))],
                     dict(STAGE1_ATTRS, **SPLIT_ATTRS, code_shape="[3]"))
    assert writer.n_parts == 3  # the unused name of a piece is not a part of the index
    assert not list(tmp_path.glob("*.tmp.h5"))
    index = read_index(path)
    with h5py.File(path) as f:
        got = f["codes"][()]
        assert f["paths"].dtype.itemsize == width
    assert np.abs(expected).max() > 0.1 and np.array_equal(got, expected)  # (random codes, not ~0)
    assert index.paths == paths and np.array_equal(index.labels, labels) and np.array_equal(index.split, split)
    assert np.array_equal(index.rows.fingerprints, np.concatenate([p.fingerprints for p in pieces]))
    assert np.array_equal(index.rows.digests, np.concatenate([p.digests for p in pieces]))
    assert list(index.failed) == ["bad.jpg"]


def test_an_index_writer_refuses_what_does_not_fit_and_leaves_nothing(tmp_path):
    path = tmp_path / "l-avg.h5"
    write_parts(parts_dir(path), {"a": 4}, np.random.default_rng(1))
    rows = Rows.of_part("part-a.h5", np.zeros((4, 2)), np.arange(1, 5))
    for paths, n_rows, problem in ((["a/1.jpg", "a/2.jpg", "a/3.jpg", "a/long name.jpg"], 4, "wide"),
                                   (["a/1.jpg"] * 4, 3, "rows")):
        with (pytest.raises(ValueError, match="path of 15 bytes" if problem == "wide" else "at row 0 of 3"),
              IndexWriter(path, n_rows=n_rows, dim=3, dtype="float32", path_width=7, labels_shape=()) as w):
            w.add(rows, PathList.of(paths), np.zeros(4), np.zeros(4))
        assert not path.exists() and not list(tmp_path.glob("*.tmp.h5"))
    with (pytest.raises(ValueError, match="3 rows written of 4"),  # closed short: not moved into place
          IndexWriter(path, n_rows=4, dim=3, dtype="float32", path_width=7, labels_shape=()) as w):
        w.add(rows.take([0, 1, 2]), PathList.of(["a/1.jpg"] * 3), np.zeros(3), np.zeros(3))
        w.close(["c"], [], dict(STAGE1_ATTRS, code_shape="[3]"))
    assert not path.exists() and not list(tmp_path.glob("*.tmp.h5"))


def commit_extra(tmp_path, n: int) -> int:
    """Python's peak memory (tracemalloc) while a build of ``n`` images commits its index, above
    what it held before (the data set and the plan): parts of 2,048 images written directly."""
    import tracemalloc

    files = [tmp_path / f"cache{n}" / "x.h5"]
    plan = make_plan(synthetic_folder(tmp_path, n), files, [STAGE1_ATTRS], target=2048)
    write_planned_parts(plan, files[0])
    split = np.zeros(n, np.int8)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        commit_all(plan, split, SPLIT_ATTRS, max_parts=256)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_build_commits_its_index_a_piece_at_a_time(tmp_path, monkeypatch):
    """The commit of a build holds a part's rows and a chunk of the index at a time: what it
    needs above the data set and the plan does not grow with the number of images (it held
    the whole index, about 90 bytes an image, before it was written in pieces)."""
    from pipeline.codes import CodeSet

    monkeypatch.setattr(_commit, "CHUNK", 4096)  # the same chunk at both sizes
    small, large = commit_extra(tmp_path, 20_000), commit_extra(tmp_path, 80_000)
    assert small > 100_000, small  # (the measure sees the commit's buffers: not ~0)
    per_image = (large - small) / 60_000
    assert per_image < 8, (small, large, per_image)
    cs = CodeSet.load(tmp_path / "cache80000" / "x.h5")
    assert len(cs) == 80_000 and cs.paths[54321] == "class1/img0054321.jpg" and cs.y[54321] == 1


def test_an_index_of_scattered_rows_opens_in_little_memory(tmp_path):
    """Removals scattered over a code set leave its rows in thousands of runs of its parts. One
    mapping of the virtual codes per run held about 19 KB each in HDF5 once opened (4,000 runs:
    about 75 MB); runs of a part joined into one mapping hold a fraction of it."""
    import subprocess
    import sys

    path = tmp_path / "l-avg.h5"
    codes = write_parts(parts_dir(path), {"a": 8000}, np.random.default_rng(2))
    rows = Rows.of_part("part-a.h5", np.zeros((8000, 2)), np.arange(1, 8001)).take(np.arange(0, 8000, 2))
    with IndexWriter(path, n_rows=4000, dim=3, dtype="float32", path_width=12, labels_shape=()) as writer:
        writer.add(rows, PathList.of([f"a/{i:06d}.jpg" for i in range(4000)]), np.zeros(4000), np.zeros(4000))
        writer.close(["c"], [], dict(STAGE1_ATTRS, **SPLIT_ATTRS, code_shape="[3]"))
    opened = subprocess.run([sys.executable, "-c", f"""
import h5py
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
before = rss()
f = h5py.File({str(path)!r}, "r")
codes = f["codes"]
print(rss() - before, codes.id.get_create_plist().get_virtual_count())
"""], capture_output=True, text=True, check=True).stdout.split()
    grown, mappings = int(opened[0]), int(opened[1])
    assert mappings == 16 and grown < 10e6, (grown, mappings)  # (4,000 mappings: about 75 MB)
    with h5py.File(path) as f:
        assert np.array_equal(f["codes"][()], codes["part-a.h5"][::2]) and np.abs(codes["part-a.h5"]).max() > 0.1


def test_one_very_long_path_does_not_widen_every_row(tmp_path):
    """The index's paths are text of fixed width (every path as wide as the longest), unless the
    longest is over 256 bytes: then of variable length, read back the same by every reader."""
    path = tmp_path / "l-avg.h5"
    write_parts(parts_dir(path), {"a": 5}, np.random.default_rng(3))
    paths = ["a/1.jpg", "b/" + "é" * 200 + ".jpg", "c/x", "d/" + "y" * 300, "e/z.jpg"]
    names = PathList.of(paths)
    with IndexWriter(path, n_rows=5, dim=3, dtype="float32", path_width=names.max_bytes(), labels_shape=()) as w:
        w.add(Rows.of_part("part-a.h5", np.zeros((5, 2)), np.arange(1, 6)), names, np.zeros(5), np.zeros(5))
        w.close(["c"], [], dict(STAGE1_ATTRS, **SPLIT_ATTRS, code_shape="[3]"))
    with h5py.File(path) as f:
        assert h5py.check_string_dtype(f["paths"].dtype).length is None  # (fixed: 406 bytes a row)
    from pipeline.codes import CodeSet

    assert list(read_index(path).paths) == paths and CodeSet(path).paths == paths


@pytest.mark.parametrize("raw, message", [(b"a\x00b.jpg", "is not a path inside the data folder"),
                                          (b"\xff\xfe.jpg", "paths holds text that is not UTF-8")])
def test_an_index_read_as_bytes_still_refuses_a_nul_or_text_not_utf8(tmp_path, raw, message):
    """Stage 1 reads an index's paths as bytes (no str each): a path with a NUL (kept by a
    fixed-width column) or bytes that are not UTF-8 are refused as when they were read as text."""
    from pipeline.errors import UserError

    path = tmp_path / "l-avg.h5"
    with h5py.File(path, "w") as f:
        f["codes"] = np.ones((3, 2), np.float32)
        f["labels"], f["split"] = np.zeros(3, np.int32), np.zeros(3, np.int8)
        encoded = np.array([b"a/1.jpg", raw, b"c.jpg"])
        text = h5py.string_dtype("utf-8", encoded.dtype.itemsize)
        f.create_dataset("paths", data=encoded.view(text), dtype=text)
        f.create_dataset("class_names", data=["a"], dtype=h5py.string_dtype())
    with pytest.raises(UserError, match=f"not a valid code set .*{message}"):
        read_index(path)
