"""Stage 1 survives being killed at every step, interrupted, starved of disk, and run twice at once."""
import os
import re
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import FAST, ROOT, assert_codes_close, assert_same_codes, make_images

from pipeline.codes import POINTS, generate_codes, writer_lock

OUTPUTS = dict(layers=["top_activation"], poolings=["avg", "max"])
VOLATILE_ATTRS = {"created", "versions"}  # all other attributes must match an uninterrupted run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("crash") / "data", n_classes=3, per_class=10)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return generate_codes(data, cache_dir=tmp_path_factory.mktemp("reference"), partition_size=8, **FAST, **OUTPUTS)


def _contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, {k: v for k, v in f.attrs.items() if k not in VOLATILE_ATTRS}


def assert_same_code_set(a, b):
    (da, aa), (db, ab) = _contents(a), _contents(b)
    assert sorted(da) == sorted(db)
    for key in da:
        if key == "codes":
            assert_codes_close(da[key], db[key], rtol=0, err_msg=key)  # equal, and of order 1
        else:
            np.testing.assert_array_equal(da[key], db[key], err_msg=key)
    assert {k: str(v) for k, v in aa.items()} == {k: str(v) for k, v in ab.items()}


def codes_cmd(data, cache, *extra):
    return [sys.executable, "generate_codes.py", "--data", str(data), "--weights", "none", "--image-size", "32",
            "--batch-size", "4", "--partition-size", "8", "--pooling", "avg", "max", "--no-progress",
            "--cache-dir", str(cache), *extra]


def user_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it
    return env


def run(cmd, env=None, preexec_fn=None, **kw):
    """Run ``cmd`` as a user would from a terminal: Ctrl-C (SIGINT) handled even where the tests
    themselves run in the background (a shell starts background jobs with SIGINT ignored)."""
    def start():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if preexec_fn:
            preexec_fn()
    env = dict(user_env(), **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, preexec_fn=start,
                          **kw)


def outputs_of(cache):
    return sorted(p for p in cache.rglob("*.h5") if not p.parent.name.endswith(".parts"))


def assert_clean(cache):
    """No temporary file, and nothing in a parts folder that its index does not refer to."""
    assert not list(cache.rglob("*.tmp.h5")) and not list(cache.rglob("*.partial"))
    for index in outputs_of(cache):
        with h5py.File(index) as f:
            names = sorted(f["part_names"].asstr()[()])
        assert sorted(p.name for p in index.with_name(index.stem + ".parts").iterdir()) == names


# every point of a first build, a later partition, and between outputs (compaction: below)
KILLS = [p for p in POINTS if p != "compact-part-saved"] + ["part-saved:5", "output-done:2"]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILLS)
def test_killed_at_any_point_the_same_command_finishes_the_same_file(point, data, reference, tmp_path):
    cache = tmp_path / "cache"
    killed = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": point})
    assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
    files = generate_codes(data, cache_dir=cache, partition_size=8, **FAST, **OUTPUTS)
    for got, want in zip(files, reference):
        assert_same_code_set(got, want)
    assert_clean(cache)


def _update_with_compaction(data, cache, extra_env=None):
    """Add three images to a finished code set of about four parts, with at most four parts allowed."""
    cmd = codes_cmd(data, cache, "--max-parts", "4")
    return run(cmd, env=extra_env)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compact-part-saved", "index-moved:2", "parts-cleaned"])
def test_killed_while_compacting_the_same_command_finishes_the_same_file(point, data, tmp_path):
    ref, cache = tmp_path / "ref", tmp_path / "cache"
    for c in (ref, cache):
        assert run(codes_cmd(data, c)).returncode == 0
    extra = [data / "class0" / f"zz{i}.png" for i in range(3)]
    for p in extra:
        p.write_bytes((data / "class1" / "img001.png").read_bytes())
    try:
        done = _update_with_compaction(data, ref)
        assert done.returncode == 0 and "merged small parts" in done.stdout, done.stdout
        killed = _update_with_compaction(data, cache, {"CNN_CODES_FAULT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
        again = _update_with_compaction(data, cache)
        assert again.returncode == 0, again.stderr
        # and the compacted code set holds what an uncompacted build of the same images holds
        plain = tmp_path / "plain"
        assert run(codes_cmd(data, plain)).returncode == 0
    finally:
        for p in extra:
            p.unlink()
    for got, want, uncompacted in zip(outputs_of(cache), outputs_of(ref), outputs_of(plain)):
        assert_same_code_set(got, want)
        with h5py.File(got) as f:
            assert len(f["part_names"]) <= 4
        assert_same_rows(got, uncompacted)
    assert_clean(cache)


def assert_same_rows(a, b):
    """Row for row by path, the same images, labels and codes (computed in other batches: within
    1e-5 of their scale). Splits are left out: a fresh build draws them over all the images."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert len(fa["part_names"]) < len(fb["part_names"])  # one is compacted, the other not
    assert_same_codes(a, b, ordered=False, keys=("paths", "labels", "fingerprints", "digests"))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["part-saved:3", "all-staged", "index-tmp-written", "output-done"])
def test_ctrl_c_at_any_point_is_one_line_and_resumable(point, data, reference, tmp_path):
    cache = tmp_path / "cache"
    r = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": point, "CNN_CODES_FAULT_SIGNAL": "INT"})
    assert r.returncode == 130, (point, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), (point, r.stderr)
    if point == "part-saved:3":  # partition 1 saved for both outputs, partition 2 for the first
        assert "1 finished partition(s) are kept" in lines[0]
    files = generate_codes(data, cache_dir=cache, partition_size=8, **FAST, **OUTPUTS)
    for got, want in zip(files, reference):
        assert_same_code_set(got, want)


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["parts", "index"])
def test_disk_full_is_one_line_and_loses_nothing(stage, data, reference, tmp_path):
    """A file-size limit stands in for a full disk: the part of a new image, or (an image
    removed, nothing to compute) the new index cannot be written. Both are found before HDF5
    starts writing (it crashes the process on a failed write)."""
    cache = tmp_path / "cache"
    first = generate_codes(data, cache_dir=cache, partition_size=8, **FAST, **OUTPUTS)  # must survive
    changed = data / "class0" / ("extra.png" if stage == "parts" else "img001.png")
    saved = (changed.read_bytes(), changed.stat()) if changed.exists() else None
    if stage == "parts":
        changed.write_bytes((data / "class1" / "img001.png").read_bytes())
    else:
        changed.unlink()
    try:
        before = [f.read_bytes() for f in first]
        r = run(codes_cmd(data, cache), preexec_fn=_file_size_limit(4_000))
        assert r.returncode == 2, (stage, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: not enough room to write"), r.stderr
        assert "make room and run the same command again" in lines[0] and "Traceback" not in r.stderr
        assert [f.read_bytes() for f in first] == before  # the finished code sets are untouched
        again = run(codes_cmd(data, cache))
        assert again.returncode == 0, again.stderr
        assert ("1 of 31 images to compute" in again.stdout) == (stage == "parts"), again.stdout
        assert_clean(cache)
    finally:
        if saved is None:
            changed.unlink()
        else:  # as it was, modification time included: the reference code set still applies
            changed.write_bytes(saved[0])
            os.utime(changed, ns=(saved[1].st_atime_ns, saved[1].st_mtime_ns))


@pytest.mark.slow
def test_two_writers_at_once_both_succeed_and_one_computes(data, reference, tmp_path):
    cache = tmp_path / "cache"
    env = user_env()
    procs = [subprocess.Popen(codes_cmd(data, cache), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    computing = [re.search(r"(\d+) of (\d+) images to compute", out) for out, _ in outs]
    total = int(computing[0].group(2))
    assert sorted(int(m.group(1)) for m in computing) == [0, total], outs  # the second found the work done
    for got, want in zip(outputs_of(cache), sorted(reference)):
        assert_same_code_set(got, want)


def test_a_second_writer_waits_for_the_lock_or_refuses_with_no_wait(data, reference, tmp_path):
    cache = tmp_path / "cache"
    files = [cache / f.relative_to(f.parents[2]) for f in reference]
    with writer_lock(files[:1]):
        refused = run(codes_cmd(data, cache, "--no-wait"))
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [
            f"error: PID {os.getpid()} is writing the code set {files[0]}; run again when it has finished, "
            f"or without --no-wait to wait for it"]
        assert not list(cache.rglob("*.h5"))
        env = user_env()
        waiting = subprocess.Popen(codes_cmd(data, cache), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        line = waiting.stderr.readline()
        assert line.strip() == f"note: waiting for PID {os.getpid()}, which is writing the code set {files[0]}"
        time.sleep(0.5)
        assert waiting.poll() is None and not list(cache.rglob("*.h5"))
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    for got, want in zip(outputs_of(cache), sorted(reference)):
        assert_same_code_set(got, want)


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_does_not_block(data, reference, tmp_path):
    cache = tmp_path / "cache"
    killed = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": "locked"})
    assert killed.returncode == -signal.SIGKILL
    assert list(cache.rglob("*.lock"))  # the file stays; its lock died with the process
    again = run(codes_cmd(data, cache, "--no-wait"))
    assert again.returncode == 0, again.stderr
