"""Stage 1 at scale: partitions, engines, updates that cost what changed, lazy code sets."""
import json
import subprocess
import sys
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import (
    CNN_CODES,
    FAST,
    STAGE1_ATTRS,
    assert_same_codes,
    make_images,
    synthetic_folder,
    user_env,
    write_code_file,
    write_planned_parts,
)

from pipeline.codes import CodeSet, generate_codes, parts_dir
from pipeline.codes._plan import cut, make_plan
from pipeline.data import TRAIN, scan
from pipeline.heads import load_head


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("scale") / "data", n_classes=3, per_class=14)


def part_files(path):
    return {p.name: p.stat().st_size for p in parts_dir(path).iterdir()}


def rows_of(folder, names):
    total = 0
    for n in names:
        with h5py.File(folder / n) as f:
            total += f["codes"].shape[0]
    return total


def test_partition_ids_are_stable_unique_and_content_defined(data, tmp_path):
    ds = scan(data)
    files = [tmp_path / "c" / "x.h5"]
    attrs = [STAGE1_ATTRS]
    a = make_plan(ds, files, attrs, target=4)
    b = make_plan(ds, files, attrs, target=4)
    assert [p.id for p in a.partitions] == [p.id for p in b.partitions]  # the same work, the same ids
    assert len({p.id for p in a.partitions}) == len(a.partitions) >= 5
    assert [x for p in a.partitions for x in p.paths] == ds.paths  # every image once, in order
    other = make_plan(ds, files, [dict(attrs[0], dtype="float16")], target=4)
    assert not {p.id for p in a.partitions} & {p.id for p in other.partitions}  # other settings, other ids
    # one path more: only the partition it falls into changes
    paths = [f"c/{i:05d}.png" for i in range(2000)]
    before = cut(paths, 64)
    after = cut(paths[:1000] + ["c/00999a.png"] + paths[1000:], 64)
    ranges = lambda cuts, ps: {tuple(ps[s:e]) for s, e in cuts}
    changed = ranges(before, paths) ^ ranges(after, paths[:1000] + ["c/00999a.png"] + paths[1000:])
    assert len(changed) <= 4 and len(before) >= 15
    assert all(16 <= e - s <= 128 for s, e in before[:-1])


@pytest.mark.slow
def test_an_update_writes_only_what_changed(data, tmp_path):
    kw = dict(FAST, cache_dir=tmp_path / "c", partition_size=8)
    path = generate_codes(data, **kw)[0]
    full = sum(part_files(path).values())
    first = part_files(path)
    assert len(first) >= 4 and rows_of(parts_dir(path), first) == 42
    added = [data / "class1" / f"new{i}.png" for i in range(3)]
    for p in added:
        p.write_bytes((data / "class2" / "img001.png").read_bytes())
    try:
        stats = {}
        generate_codes(data, stats=stats, **kw)
        second = part_files(path)
        new = set(second) - set(first)
        assert stats["images"] == 3 and set(first) <= set(second)  # no part rewritten
        assert rows_of(parts_dir(path), new) == 3
        assert sum(second[n] for n in new) < 0.25 * full
        cs = CodeSet.load(path)
        assert len(cs) == 45 and set(cs.paths) >= {f"class1/new{i}.png" for i in range(3)}
        np.testing.assert_array_equal(cs.X[cs.paths.index("class1/new0.png")], cs.X[cs.paths.index("class1/new2.png")])
    finally:
        for p in added:
            p.unlink()
    stats = {}
    generate_codes(data, stats=stats, **kw)  # removal: nothing computed, nothing written but the index
    assert stats == {} and set(part_files(path)) == set(first)
    cs = CodeSet.load(path)
    assert len(cs) == 42 and not any("new" in p for p in cs.paths)
    assert_same_codes(path, generate_codes(data, **dict(kw, cache_dir=tmp_path / "fresh"))[0])


def test_a_large_build_is_cut_into_fewer_partitions_than_a_code_set_may_have_parts(tmp_path):
    """Partitions of at most 8,192 images would give a build of 3 million images about 370 parts,
    more than a code set may have (256): merging them would write every code a second time. The
    work is cut into at most a quarter of ``max_parts`` partitions instead (here a build of
    20,000 images with ``max_parts`` 16: 4 or so, where the rule alone gives about 10)."""
    from pipeline.codes._plan import partition_size
    from pipeline.data import ImageFolder

    assert partition_size(3_000_000) == 46_875 and partition_size(1_000_000) == 15_625
    assert partition_size(200_000) == 8192 and partition_size(20_000) == 2048 and partition_size(100) == 512
    n = 20_000
    ds = ImageFolder(tmp_path, [f"c{i % 3}/{i:06d}.jpg" for i in range(n)], np.arange(n) % 3, ["c0", "c1", "c2"],
                     np.ones((n, 2), np.int64))
    attrs = [STAGE1_ATTRS]
    usual = make_plan(ds, [tmp_path / "x.h5"], attrs)
    few = make_plan(ds, [tmp_path / "x.h5"], attrs, max_parts=16)
    assert len(usual.partitions) >= 6 and 2 <= len(few.partitions) <= 4
    assert sum(len(p) for p in few.partitions) == n and few.partitions[0].paths[0] == "c0/000000.jpg"


@pytest.mark.slow
def test_local_workers_give_the_same_code_set(data, tmp_path):
    one = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "a", partition_size=8))[0]
    two = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "b", partition_size=8, workers=2,
                                      decode_threads=1))[0]
    assert_same_codes(one, two)


@pytest.mark.slow
def test_ray_engine_gives_the_same_code_set(logs, data, tmp_path):
    ray = pytest.importorskip("ray")
    local = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "local", partition_size=8))[0]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "ray", partition_size=8, engine="ray",
                                             workers=2))[0]
    finally:
        ray.shutdown()
    assert any("42 of 42 images to compute" in l and "2 Ray worker(s)" in l for l in logs), logs
    assert_same_codes(local, remote)
    with h5py.File(local) as a, h5py.File(remote) as b:  # the same partitions, whoever computed them
        assert sorted(a["part_names"].asstr()[()]) == sorted(b["part_names"].asstr()[()])


def test_code_sets_read_lazily_and_in_blocks(data, tmp_path):
    path = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "c", partition_size=8))[0]
    cs = CodeSet.load(path)
    assert cs._X is None and cs.shape == (42, 1280) and cs.nbytes() == 42 * 1280 * 4  # nothing read yet
    mask = cs.split == TRAIN
    blocks = list(cs.blocks(mask, block=5))
    assert all(len(codes) <= 5 for _, codes in blocks)
    np.testing.assert_array_equal(np.concatenate([c for _, c in blocks]), cs.rows(mask))
    np.testing.assert_array_equal(np.concatenate([i for i, _ in blocks]), np.flatnonzero(mask))
    assert cs._X is None
    np.testing.assert_array_equal(cs.X[mask], cs.rows(mask))


@pytest.mark.slow
def test_a_missing_part_is_one_clear_error(data, tmp_path):
    from pipeline.errors import UserError
    path = generate_codes(data, **dict(FAST, cache_dir=tmp_path / "c", partition_size=8))[0]
    victim = sorted(parts_dir(path).iterdir())[0]
    victim.unlink()
    with pytest.raises(UserError, match="part files are missing.*run make codes again"):
        CodeSet.load(path)
    stats = {}
    generate_codes(data, stats=stats, **dict(FAST, cache_dir=tmp_path / "c", partition_size=8))
    assert 0 < stats["images"] < 42  # only the lost part's images are computed again
    assert_same_codes(path, generate_codes(data, **dict(FAST, cache_dir=tmp_path / "fresh", partition_size=8))[0],
                      ordered=False)


def synthetic_code_set(path, n=40000, dim=512, n_classes=4, seed=0, spread=0.06):
    """A code set written directly (format 1): overlapping Gaussian classes (a linear head gets
    about 85% of them right, not all: the out-of-core heads must learn, not just separate)."""
    rng = np.random.default_rng(seed)
    y = np.sort(rng.integers(0, n_classes, n))  # stored class by class, as stage 1 stores them
    centres = rng.normal(0, spread, (n_classes, dim)).astype(np.float32)
    X = centres[y] + rng.normal(0, 1.0, (n, dim)).astype(np.float32)
    split = rng.choice(np.array([0, 1, 2], np.int8), n, p=[0.7, 0.1, 0.2])
    write_code_file(path, X, y, split, [f"c{c}/{i}.png" for i, c in enumerate(y)], [f"c{c}" for c in range(n_classes)],
                    backbone="synthetic", layer="none", pooling="avg")
    return path, X, y, split


class ChildRun(typing.NamedTuple):
    peak: int      # peak resident memory, bytes
    out: str       # standard output
    run: Path      # the run folder it made
    record: dict   # its record.json


# Started by a small launcher: a child's peak RSS starts at its parent's (Linux keeps the high-water
# mark across fork and exec), and the parent here is pytest with TensorFlow loaded.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def child_peak(*args) -> ChildRun:
    """Run ``cnn-codes train ARGS`` as a child process and measure its peak resident memory,
    which sees every allocation: Python's, NumPy's, HDF5's and TensorFlow's."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, CNN_CODES, "train", *map(str, args)], env=user_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    run = Path(done.stdout.strip().splitlines()[-1].rsplit("-> ", 1)[1])
    peak = int(done.stderr.strip().splitlines()[-1]) * 1024
    return ChildRun(peak, done.stdout, run, json.loads((run / "record.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["softmax", "mlp", "logreg", "prototype"])
def test_heads_train_out_of_core_beyond_a_memory_cap(head, tmp_path):
    """The out-of-core run's peak RSS grows less than the cap over that of a run on a tiny code
    set (same imports, same head), while the in-memory run's grows by more than the codes."""
    path, X, y, split = synthetic_code_set(tmp_path / "codes.h5", n=48000, dim=1024)
    tiny, *_ = synthetic_code_set(tmp_path / "tiny.h5", n=600, dim=1024)
    cap = X.nbytes // 3  # 197 MB of codes, a 66 MB cap
    params = ["--epochs", "3"] if head in ("softmax", "mlp") else ["--Cs", "1"] if head == "logreg" else []
    common = ["--head", head, "--runs-dir", tmp_path / "runs", *params]
    # the base streams too (a cap below its 2.4 MB): the same code paths, TensorFlow's among them for
    # logreg, whose in-memory fit is scikit-learn's alone (its streamed run sat 8 KB to 4 MB above the cap)
    base = child_peak(*common, "--codes", tiny, "--memory-limit", 600 * 1024 * 4 // 3)
    assert "training out of core" in base.out
    in_memory = child_peak(*common, "--codes", path)
    streamed = child_peak(*common, "--codes", path, "--memory-limit", cap)
    assert "training out of core" not in in_memory.out and "training out of core" in streamed.out
    assert in_memory.peak - base.peak > 0.8 * X.nbytes  # the measure sees the codes when they are loaded
    assert streamed.peak - base.peak < cap, (streamed.peak - base.peak, cap)
    assert streamed.record["out_of_core"] is True
    accuracy, reference = streamed.record["metrics"]["accuracy"], in_memory.record["metrics"]["accuracy"]
    assert 0.6 <= reference <= 0.97, reference  # neither chance nor trivially separable
    assert abs(accuracy - reference) < 0.03, (accuracy, reference)
    restored = load_head(streamed.run)  # saved and loaded as any head; the Keras export agrees with it
    test = split == 2
    proba = restored.predict_proba(X[test])
    np.testing.assert_allclose(np.asarray(restored.to_keras()(X[test][:64])), proba[:64], atol=1e-4)
    assert (restored.classes_[proba.argmax(1)] == y[test]).mean() == pytest.approx(accuracy, abs=1e-6)


# Runs one command in a process of its own; reports what it wrote (every byte: wchar of
# /proc/self/io) and whether TensorFlow was imported.
MEASURED = ("import json, sys; from pipeline.cli.main import main; code = main(sys.argv[1:]); "
            "io = dict(l.split(': ') for l in open('/proc/self/io').read().splitlines()); "
            "print(json.dumps({'code': code, 'written': int(io['wchar']), 'tensorflow': 'tensorflow' in sys.modules}))")


def measured_codes(data, cache):
    done = subprocess.run([sys.executable, "-c", MEASURED, "codes", "--data", str(data), "--cache-dir", str(cache),
                           "--weights", "none", "--image-size", "32", "--no-progress"], env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    *lines, last = done.stdout.splitlines()
    return json.loads(last), "\n".join(lines)


@pytest.mark.slow
def test_an_update_grows_with_the_change_not_with_the_data_set(tmp_path):
    """Five images added to 300 and to 900: the same work (five computed, their part written),
    bytes written that barely grow with the data set (the index: a few bytes per image), and
    no TensorFlow once the converted model is cached."""
    written = {}
    for n in (300, 900):
        data = make_images(tmp_path / f"d{n}", n_classes=3, per_class=n // 3, seed=n)
        build, _ = measured_codes(data, tmp_path / f"c{n}")
        for i, source in enumerate(sorted((data / "class2").glob("*.png"))[:5]):
            (data / "class1" / f"new{i}.png").write_bytes(source.read_bytes())
        update, out = measured_codes(data, tmp_path / f"c{n}")
        assert f"5 of {n + 5} images to compute ({n} cached, 5 new)" in out and "computed 5 images" in out
        assert not update["tensorflow"]  # the conversion was cached by the build
        written[n] = (build["written"], update["written"])
    (build_s, update_s), (build_l, update_l) = written[300], written[900]
    assert build_l > 1.8 * build_s > 0  # the measure sees the data set grow
    assert update_s < 0.1 * build_s and update_l < 0.04 * build_l
    assert update_l < 1.3 * update_s, written  # three times the data set, about the same update


def bookkeeping_peak(tmp_path, n: int) -> int:
    """Python's peak memory (tracemalloc: NumPy's arrays included) while stage 1 plans a build of
    ``n`` images and commits it, the part files written directly (codes of 4 values): what the
    plan and the index hold per image, without images, a model or the scan."""
    import tracemalloc

    from pipeline.codes._commit import commit_all

    ds = synthetic_folder(tmp_path, n)
    files = [tmp_path / f"cache{n}" / "x.h5"]
    tracemalloc.start()
    try:
        plan = make_plan(ds, files, [STAGE1_ATTRS])
        write_planned_parts(plan, files[0])
        commit_all(plan, np.zeros(n, np.int8), dict(split_fractions="[0.7, 0.15, 0.15]", split_seed=0,
                                                     layout="{}", task="single-label"), max_parts=256)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_stage_1_holds_arrays_not_a_record_per_image(tmp_path):
    """The plan and the commit of a build hold arrays per image (about 105 bytes an image at
    the peak by this measure, most of it what grows with a partition and with a chunk of the
    index from 20,000 to 80,000 images and stays the same beyond: a partition's paths made a
    JSON list for its id, a chunk of each column of the index; partitions' paths views of the
    data set's; the index written a piece at a time), not a Python record, tuples and dictionary
    entries (644 bytes an image with the same measure three versions ago, 204 with a str per path
    in the partitions and the index's paths encoded whole, 140 with the index built whole), so
    that a million images' bookkeeping is a small part of a build's peak
    (benchmarks/bench_scale.py measures the whole process)."""
    small, large = bookkeeping_peak(tmp_path, 20_000), bookkeeping_peak(tmp_path, 80_000)
    per_image = (large - small) / 60_000
    assert 40 < per_image < 130, per_image  # (the measure sees the per-image arrays: not ~0)
    cs = CodeSet.load(tmp_path / "cache80000" / "x.h5")
    assert len(cs) == 80_000 and cs.paths[12345] == "class1/img0012345.jpg" and cs.y[12345] == 1
