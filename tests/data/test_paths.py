"""PathList: a data set's paths held compactly through stage 1, read back exactly."""
import pickle

import numpy as np
import pytest

import pipeline.data._paths as paths_module
from pipeline.data import PathList, PathLookup

NAMES = ["a/b.jpg", "é/ü ñ.png", "c/d e.jpg", "x", "日本/写真.jpg", "z/new\nline.png"]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 4 paths (and lookups of 8), so that a few paths cross several blocks."""
    monkeypatch.setattr(paths_module, "_BLOCK", 4)
    monkeypatch.setattr(paths_module, "_FIND_BLOCK", 8)


def test_a_path_list_reads_back_every_path_however_it_is_taken(small_blocks):
    names = NAMES + [f"class{i % 3}/img{i:04d}.jpg" for i in range(23)]
    paths = PathList.of(names)
    assert len(paths) == len(names) and list(paths) == names and paths == names and names == paths
    assert [paths[i] for i in range(len(names))] == names and paths[-1] == names[-1] and paths[np.int64(4)] == names[4]
    assert paths[3:11] == names[3:11] and paths[5:2] == [] and paths[1:20:3] == names[1:20:3]
    assert paths[3:11][2:5] == names[3:11][2:5]  # a view of a view
    order = np.random.default_rng(0).permutation(len(names))
    assert paths.take(order) == [names[i] for i in order]  # scattered: bytes gathered block by block
    runs = np.r_[np.arange(10, 29), np.arange(0, 5)]
    assert paths.take(runs) == [names[i] for i in runs]  # long runs: copied run by run
    assert paths.take([]) == [] and paths.take([-1]) == [names[-1]]
    mask = np.arange(len(names)) % 3 == 1
    assert paths.take(mask) == [n for n, m in zip(names, mask) if m]  # a mask: where it is true
    assert PathList.concat([paths[20:], PathList.of(["q/r.png"]), paths[:2]]) == names[20:] + ["q/r.png"] + names[:2]
    assert [b for block in paths.encoded_blocks(5) for b in block] == [n.encode() for n in names]
    assert paths.max_bytes() == max(len(n.encode()) for n in names)
    assert "x" in paths and paths.index("x") == 3 and "y" not in paths
    for wrong in (paths[:-1], names[:-1] + ["other"], PathList.of(names[:-1] + ["other"])):
        assert paths != wrong
    with pytest.raises(IndexError):
        paths[len(names)]
    with pytest.raises(IndexError):
        paths.take([len(names)])


def test_views_share_the_bytes_and_a_pickled_view_carries_only_its_paths():
    names = [f"class{i % 10}/img{i:07d}.jpg" for i in range(20000)]
    paths = PathList.of(names)
    assert paths.take(np.arange(100, 200)) == names[100:200]
    assert paths.take(np.arange(100, 200))._blob is paths._blob  # a run: a view, no copy
    parts = [paths[s:s + 1000] for s in range(0, 20000, 1000)]
    whole = PathList.concat(parts)
    assert whole == names and whole._blob is paths._blob  # consecutive views: the same bytes
    one = pickle.dumps(paths[5000:5100])
    assert pickle.loads(one) == names[5000:5100] and len(one) < len(pickle.dumps(paths)) / 50
    assert pickle.loads(pickle.dumps(PathList.of([]))) == []
    # a list of str takes about 80 bytes a path of 21 characters; this, 26
    held = len(paths._blob) + paths._starts.nbytes
    assert 22 * len(names) < held < 30 * len(names)


def test_a_path_with_a_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        PathList.of(["a.jpg", "b\0c.jpg"])


@pytest.mark.parametrize("hashing", ["real", "colliding"])
def test_a_lookup_finds_each_path_where_it_is_and_only_there(small_blocks, hashing, monkeypatch):
    """Every path found at its own position (shuffled, in runs, non-ASCII, lengths apart), -1
    for those it does not hold, however the hashes fall: with a hash of three values every
    query collides with a third of the list, and still only the same bytes match."""
    if hashing == "colliding":
        monkeypatch.setattr(paths_module, "_hashes", lambda p: np.array([len(x) % 3 for x in p], np.uint64))
    names = NAMES + [f"class{i % 3}/img{i:04d}.jpg" for i in range(40)] + ["a/b.jpgx", "a/b.jp", "l/" + "é" * 900]
    lookup = PathLookup(PathList.of(names))
    rng = np.random.default_rng(1)
    order = rng.permutation(len(names))
    absent = ["a/b.jpeg", "a/B.jpg", "", "class1/img0001.jpg ", "é/u ñ.png", "class0/img0004.jpg"]
    queries = [names[i] for i in order] + absent
    found = lookup.find(queries)
    assert found.tolist() == order.tolist() + [-1, -1, -1, -1, -1, -1]
    assert lookup.find(PathList.of(names)[10:30]).tolist() == list(range(10, 30))  # a view, in order
    assert lookup.find([]).tolist() == [] and PathLookup(PathList.of([])).find(["x"]).tolist() == [-1]
    # the check that rejects a wrong match: a query of another path under the same hash
    wrong = lookup.find(["a/b.jpx"])  # (its length is that of a/b.jpg: the same colliding hash)
    assert wrong.tolist() == [-1]


def test_paths_hash_the_same_in_any_list_and_apart_when_they_differ():
    names = [f"class{i % 7}/img {i}/é{'x' * (i % 13)}.jpg" for i in range(3000)]
    whole = paths_module._hashes(PathList.of(names))
    assert len(set(whole.tolist())) == len(names)  # no two of 3,000 paths share a hash
    again = paths_module._hashes(PathList.of(names[::-1] + ["a" * 3000]))  # another order, a long path beside
    assert (again[:-1][::-1] == whole).all()
