import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
from helpers import (
    CNN_CODES,
    FAST,
    as_format1,
    assert_codes_close,
    make_images,
    user_env,
)
from PIL import Image

from pipeline.backbones import REGISTRY
from pipeline.cli.main import main, run_cli
from pipeline.codes import CodeSet, generate_codes
from pipeline.codes._format import CodeFileError, check_code_file
from pipeline.data import TEST, TRAIN, VAL
from pipeline.errors import UserError


def computed(data, **kw) -> int:
    """How many images a generate_codes call computed (its ``stats``)."""
    stats = {}
    generate_codes(data, stats=stats, **kw)
    return stats.get("images", 0)


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_hdf5_layout_keys_and_attributes(images, tmp_path):
    files = generate_codes(images, layers=["top_activation", "block7a_project_bn"], poolings=["avg", "flatten"],
                           cache_dir=tmp_path / "cache", **FAST)
    assert [f.name for f in files] == ["top_activation-avg.h5", "top_activation-flatten.h5",
                                       "block7a_project_bn-avg.h5", "block7a_project_bn-flatten.h5"]
    assert files[0].parent == tmp_path / "cache" / "data" / "efficientnet_lite0-32-random"
    data, attrs = _read(files[0])
    assert set(data) >= {"codes", "paths", "labels", "split", "fingerprints", "digests", "class_names",
                         "failed_paths"}
    assert data["codes"].shape == (36, 1280) and data["codes"].dtype == np.float32
    assert _read(files[1])[0]["codes"].shape == (36, 1 * 1 * 1280)  # 32 px / 32 = 1x1
    assert _read(files[2])[0]["codes"].shape == (36, 320)
    for k in ("backbone", "layer", "pooling", "image_size", "preprocessing", "weights_id", "versions",
              "code_shape", "split_seed", "split_fractions"):
        assert k in attrs, k
    assert attrs["backbone"] == "efficientnet_lite0" and attrs["image_size"] == 32
    assert attrs["preprocessing"] == "lite" and attrs["weights_id"] == "random"
    assert json.loads(attrs["code_shape"]) == [1, 1, 1280]
    assert "tensorflow" in json.loads(attrs["versions"])
    assert [s.decode() for s in data["class_names"]] == ["class0", "class1", "class2"]
    assert not list((tmp_path / "cache").rglob("*.partial"))
    cs = CodeSet.load(files[0])
    assert set(np.unique(cs.split)) == {TRAIN, VAL, TEST}
    assert np.isfinite(cs.X).all() and cs.X.std() > 0


@pytest.mark.slow
def test_codes_are_deterministic_and_float16_on_request(images, tmp_path):
    a = generate_codes(images, cache_dir=tmp_path / "a", **FAST)[0]
    b = generate_codes(images, cache_dir=tmp_path / "b", dtype="float16", **FAST)[0]
    ca, cb = _read(a)[0]["codes"], _read(b)[0]["codes"]
    assert cb.dtype == np.float16
    assert np.abs(ca).max() >= 0.01 and (cb != 0).mean() > 0.2  # random test weights give codes of order 1
    assert_codes_close(cb, ca, rtol=1e-3)  # float16's precision, relative to the codes' scale
    c = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    assert_codes_close(_read(c)[0]["codes"], ca, rtol=0)


def test_incremental_added_changed_removed_images(logs, images, tmp_path):
    kw = dict(FAST, cache_dir=tmp_path / "cache")
    path = generate_codes(images, **kw)[0]
    first, _ = _read(path)
    assert computed(images, **kw) == 0  # nothing to do
    # add one, change one, remove one
    Image.fromarray(np.full((30, 30, 3), 10, np.uint8)).save(images / "class1" / "new.png")
    changed = images / "class2" / "img000.JPG"
    Image.fromarray(np.full((30, 30, 3), 250, np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    (images / "class0" / "img001.png").unlink()
    logs.clear()
    assert computed(images, **kw) == 2
    assert any("2 of 36 images to compute" in l for l in logs), logs  # the summary line users read
    second, _ = _read(path)
    p1 = [p.decode() for p in first["paths"]]
    p2 = [p.decode() for p in second["paths"]]
    assert "class1/new.png" in p2 and "class0/img001.png" not in p2 and len(p2) == 36
    for p in p2:  # unchanged images keep exactly their codes
        if p in p1 and p != "class2/img000.JPG":
            np.testing.assert_array_equal(second["codes"][p2.index(p)], first["codes"][p1.index(p)])
    changed_row = second["codes"][p2.index("class2/img000.JPG")]
    assert not np.array_equal(changed_row, first["codes"][p1.index("class2/img000.JPG")])


def test_touched_images_are_recognized_by_content(images, tmp_path):
    """A copied or re-extracted data set: new modification times, same bytes."""
    kw = dict(FAST, cache_dir=tmp_path / "cache")
    path = generate_codes(images, **kw)[0]
    first, _ = _read(path)
    assert first["digests"].dtype == np.uint64 and (first["digests"] != 0).all()
    paths = [p.decode() for p in first["paths"]]
    with h5py.File(path, "a") as f:  # as if this image's content had changed at the same size
        f["digests"][paths.index("class1/img002.jpeg")] = 12345
    later = time.time_ns() + 10**10
    for p in images.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(later, later))
    assert computed(images, **kw) == 1
    second, _ = _read(path)
    assert (second["fingerprints"][:, 1] == later).all()  # new times stored: next run is quick
    p2 = [p.decode() for p in second["paths"]]
    for i, p in enumerate(paths):
        if p != "class1/img002.jpeg":
            np.testing.assert_array_equal(second["codes"][p2.index(p)], first["codes"][i])
    before = path.stat().st_mtime_ns
    assert computed(images, **kw) == 0 and path.stat().st_mtime_ns == before


def test_unreadable_images_are_skipped_counted_and_listed(logs, images, tmp_path):
    (images / "class0" / "broken.jpg").write_bytes(b"garbage")
    (images / "class1" / "empty.png").write_bytes(b"")
    path = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    data, _ = _read(path)
    assert data["codes"].shape[0] == 36
    assert sorted(p.decode() for p in data["failed_paths"]) == ["class0/broken.jpg", "class1/empty.png"]
    assert any("2 unreadable image(s) skipped" in l for l in logs)
    logs.clear()
    assert computed(images, cache_dir=tmp_path / "c", **FAST) == 0, \
        "known-bad images are not retried until they change"
    assert any("2 unreadable image(s) skipped" in l for l in logs)
    Image.fromarray(np.full((20, 20, 3), 99, np.uint8)).save(images / "class0" / "broken.jpg")
    assert computed(images, cache_dir=tmp_path / "c", **FAST) == 1
    assert _read(path)[0]["codes"].shape[0] == 37


def test_every_image_records_its_own_fingerprint_in_a_stream_of_partitions(images, tmp_path):
    """One worker computes several partitions as one stream: each row, and each unreadable image
    (in the first partition and in the last), records its own file's size and time."""
    (images / "class0" / "aa_broken.jpg").write_bytes(b"junk")
    (images / "class2" / "zz_broken.jpg").write_bytes(b"garbage!")
    path = generate_codes(images, cache_dir=tmp_path / "c", partition_size=8, **FAST)[0]

    def stat(p):
        st = os.stat(images / p)
        return st.st_size, st.st_mtime_ns
    with h5py.File(path) as f:
        rows = dict(zip(f["paths"].asstr()[()], map(tuple, f["fingerprints"][()].tolist())))
        failed = dict(zip(f["failed_paths"].asstr()[()], map(tuple, f["failed_fingerprints"][()].tolist())))
        parts = len(f["part_names"])
    assert parts >= 3 and len(rows) == 36 and set(failed) == {"class0/aa_broken.jpg", "class2/zz_broken.jpg"}
    assert len({fp for fp in rows.values()}) > 30  # (distinct sizes and times: a mix-up would show)
    assert all(fp == stat(p) for p, fp in rows.items())
    assert all(fp == stat(p) for p, fp in failed.items())


@pytest.mark.slow
def test_files_from_before_failure_fingerprints_are_read_and_failures_retried(images, tmp_path):
    (images / "class0" / "broken.jpg").write_bytes(b"garbage")
    path = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    before, _ = _read(path)
    as_format1(path, drop=("failed_fingerprints", "digests"))  # as written by version 0.1.0 before them
    assert computed(images, cache_dir=tmp_path / "c", **FAST) == 1
    data, attrs = _read(path)
    assert data["codes"].shape[0] == 36 and data["failed_fingerprints"].shape == (1, 2)
    assert (data["digests"] != 0).all() and attrs["format_version"] == 2
    np.testing.assert_array_equal(data["codes"], before["codes"])  # the old file became the first part
    assert [p.name.startswith("part-v1-") for p in (path.parent / "top_activation-avg.parts").iterdir()] == [True]


def test_other_settings_are_refused_without_losing_the_file(images, tmp_path):
    path = generate_codes(images, cache_dir=tmp_path / "c", **FAST)[0]
    with h5py.File(path, "a") as f:
        f.attrs["preprocessing"] = "caffe"
    before = path.read_bytes()
    with pytest.raises(UserError, match="other settings"):
        generate_codes(images, cache_dir=tmp_path / "c", **FAST)
    assert path.read_bytes() == before
    generate_codes(images, cache_dir=tmp_path / "c", overwrite=True, **FAST)
    with h5py.File(path) as f:
        assert f.attrs["preprocessing"] == "lite"


@pytest.mark.slow
def test_resume_with_several_layers_and_poolings_after_a_kill(tmp_path):
    """Four outputs of one pass (two layers x two poolings), killed part-way through the batches:
    the rerun computes only what is missing and gives the four files of an uninterrupted run."""
    data = make_images(tmp_path / "data", n_classes=3, per_class=10)
    outputs = dict(layers=["top_activation", "block7a_project_bn"], poolings=["avg", "flatten"])
    ref = generate_codes(data, cache_dir=tmp_path / "ref", partition_size=8, **FAST, **outputs)
    cmd = [CNN_CODES, "codes", "--data", str(data), "--weights", "none", "--image-size", "32", "--batch-size", "8",
           "--layer", "top_activation", "block7a_project_bn", "--pooling", "avg", "flatten", "--no-progress",
           "--partition-size", "8", "--cache-dir", str(tmp_path / "resumed")]
    killed = subprocess.run(cmd, env=dict(user_env(), CNN_CODES_FAULT="part-saved:10"), capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    with h5py.File(ref[0]) as f:  # rows are in plan order: the first two partitions were saved for all four
        row_part = f["row_part"][()].tolist()
    first_two = sum(row_part.count(p) for p in list(dict.fromkeys(row_part))[:2])
    assert len(set(row_part)) >= 3 and first_two < 30
    stats = {}
    files = generate_codes(data, cache_dir=tmp_path / "resumed", stats=stats, partition_size=8, **FAST, **outputs)
    assert stats["images"] == 30 - first_two
    assert [f.name for f in files] == [f.name for f in ref]
    for got, want in zip(files, ref):
        a, attrs_a = _read(got)
        b, attrs_b = _read(want)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{got.name} {key}")


def test_list_layers(capsys):
    assert run_cli_main(["codes", "--backbone", "efficientnet_lite0", "--list-layers"], capsys) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [l.split()[0] for l in lines]
    assert names[0] == "image" and names[-1] == "top_activation" and len(names) == 141
    suggested = [l.split()[0] for l in lines if l.endswith("(suggested)")]
    assert set(suggested) == set(REGISTRY["efficientnet_lite0"].suggested_layers)
    assert "(7, 7, 1280)" in lines[-1]  # 224 px / 32


def run_cli_main(argv, capsys):
    with pytest.raises(SystemExit) as ex:
        run_cli(main, argv)
    return ex.value.code


def test_verify_finds_bytes_changed_behind_the_same_size_and_time(images, tmp_path):
    kw = dict(FAST, cache_dir=tmp_path / "c")
    target = images / "class1" / "raw.bmp"  # uncompressed: its pixels can change in place
    Image.fromarray(np.full((24, 24, 3), 40, np.uint8)).save(target)
    path = generate_codes(images, **kw)[0]
    before = CodeSet.load(path)
    before.X  # read now: the file is about to be replaced
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[54:] = bytes(255 - b for b in data[54:])  # other pixels, same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same modification time
    assert computed(images, **kw) == 0  # size and time unchanged: taken as unchanged, as make and rsync do
    stale = CodeSet.load(path)
    assert computed(images, verify=True, **kw) == 1
    with pytest.raises(UserError, match="replaced since it was opened"):
        stale.X  # opened lazily before the update: not read from a file that changed under it
    after = CodeSet.load(path)
    assert sorted(after.paths) == sorted(before.paths)
    code = lambda cs, p: cs.X[cs.paths.index(p)]
    assert not np.array_equal(code(before, "class1/raw.bmp"), code(after, "class1/raw.bmp"))
    for p in before.paths:
        if p != "class1/raw.bmp":
            np.testing.assert_array_equal(code(before, p), code(after, p))


@pytest.mark.parametrize("bad", ["../up.jpg", "a/../../up.jpg", "/etc/passwd", "\\\\server\\share\\x.jpg", "C:/x.jpg",
                                 "\u20ac:\\x.jpg", "a\0b.jpg"])
def test_a_path_leading_out_of_the_data_folder_is_found_among_many(bad, tmp_path):
    """The paths of a code set are checked all at once (joined) and one by one only where that
    finds a candidate, in blocks of 65,536: one bad path anywhere among 70,000 is still refused
    (in the first block or the second), and names that only look like candidates are not; read
    as text (a reader) or as bytes (stage 1's index; a drive letter of three bytes: "€:")."""
    def code_set(paths):
        path = tmp_path / f"codes-{len(os.listdir(tmp_path))}.h5"
        with h5py.File(path, "w") as f:
            f["codes"] = np.ones((len(paths), 3), np.float32)
            f["labels"] = np.zeros(len(paths), np.int32)
            f["split"] = np.zeros(len(paths), np.int8)
            encoded = np.array([p.encode() for p in paths])  # fixed length: a NUL inside is kept
            text = h5py.string_dtype("utf-8", encoded.dtype.itemsize)
            f.create_dataset("paths", data=encoded.view(text), dtype=text)
            f.create_dataset("class_names", data=["a"], dtype=h5py.string_dtype())
        return path

    good = [f"class{i % 7}/img {i}.jpg" for i in range(70_000)]
    look_alike = good[:2000] + ["a..b/x..y.jpg", "class1/10:30.jpg", "x/C:.jpg"] + good[2000:]
    assert CodeSet(code_set(look_alike)).paths[2001] == "class1/10:30.jpg"
    def as_bytes(path):  # (as stage 1 reads an index: a PathList, no str each)
        with h5py.File(path) as f:
            return check_code_file(f, path, compact=True)[2]

    assert as_bytes(code_set(look_alike))[2002] == "x/C:.jpg"
    for at in (0, 65_536, 69_999):
        paths = list(good)
        paths[at] = bad
        with pytest.raises(UserError, match="data folder"):
            CodeSet(code_set(paths))
        with pytest.raises(CodeFileError, match="data folder"):
            as_bytes(code_set(paths))
