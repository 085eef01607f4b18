"""Stage 1 survives being killed at every step, interrupted, starved of disk, and run twice at once."""
import os
import resource
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import FAST, ROOT, make_images
from pipeline.codes import generate_codes
from pipeline.faults import POINTS
from pipeline.locks import writer_lock

OUTPUTS = dict(layers=["top_activation"], poolings=["avg", "max"])
VOLATILE_ATTRS = {"created", "versions"}  # all other attributes must match an uninterrupted run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("crash") / "data", n_classes=3, per_class=10)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return generate_codes(data, cache_dir=tmp_path_factory.mktemp("reference"), **FAST, **OUTPUTS)


def _contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, {k: v for k, v in f.attrs.items() if k not in VOLATILE_ATTRS}


def assert_same_code_set(a, b):
    (da, aa), (db, ab) = _contents(a), _contents(b)
    assert sorted(da) == sorted(db)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)
    assert {k: str(v) for k, v in aa.items()} == {k: str(v) for k, v in ab.items()}


def codes_cmd(data, cache, *extra):
    return [sys.executable, "generate_codes.py", "--data", str(data), "--weights", "none", "--image-size", "32",
            "--batch-size", "4", "--workers", "1", "--pooling", "avg", "max", "--no-progress",
            "--cache-dir", str(cache), *extra]


def user_env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it
    return env


def run(cmd, env=None, **kw):
    env = dict(user_env(), **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kw)


def outputs_of(cache):
    return sorted(cache.rglob("*.h5"))


KILLS = list(POINTS) + ["shard-saved:5", "output-done:2"]  # and a later batch, and between outputs


@pytest.mark.parametrize("point", KILLS)
def test_killed_at_any_point_the_same_command_finishes_the_same_file(point, data, reference, tmp_path):
    cache = tmp_path / "cache"
    killed = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": point})
    assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
    files = generate_codes(data, cache_dir=cache, **FAST, **OUTPUTS)
    for got, want in zip(files, reference):
        assert_same_code_set(got, want)
    assert not list(cache.rglob("*.partial")) and not list(cache.rglob("*.tmp.h5"))


@pytest.mark.parametrize("point", ["shard-saved:3", "all-staged", "final-partial", "final-tmp-written", "output-done"])
def test_ctrl_c_at_any_point_is_one_line_and_resumable(point, data, reference, tmp_path):
    cache = tmp_path / "cache"
    r = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": point, "CNN_CODES_FAULT_SIGNAL": "INT"})
    assert r.returncode == 130, (point, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), (point, r.stderr)
    if point == "shard-saved:3":  # batch 1 saved for both outputs, batch 2 for the first
        assert "2 finished batch(es) are kept" in lines[0]
    files = generate_codes(data, cache_dir=cache, **FAST, **OUTPUTS)
    for got, want in zip(files, reference):
        assert_same_code_set(got, want)


def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


@pytest.mark.parametrize("limit, stage", [(4_000, "batches"), (60_000, "final file")])
def test_disk_full_is_one_line_and_loses_nothing(limit, stage, data, reference, tmp_path):
    """A file-size limit stands in for a full disk: the new image's shard (6 KB) or the final
    file (160 KB) cannot be written."""
    cache = tmp_path / "cache"
    first = generate_codes(data, cache_dir=cache, **FAST, **OUTPUTS)  # a finished set that must survive
    (data / "class0" / "extra.png").write_bytes((data / "class1" / "img001.png").read_bytes())
    try:
        before = [f.read_bytes() for f in first]
        r = run(codes_cmd(data, cache), preexec_fn=_file_size_limit(limit))
        assert r.returncode == 2, (stage, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert [f.read_bytes() for f in first] == before  # the finished files are untouched
        if stage == "final file":  # found before HDF5 starts writing (HDF5 crashes on a failed write)
            assert "not enough room to write" in lines[0] and "the computed codes are kept" in lines[0]
            staged = list(cache.rglob("shard-*.npz"))
            assert staged, "the computed batch stays staged"
        again = run(codes_cmd(data, cache))
        assert again.returncode == 0, again.stderr
        assert ("1 of 31 images to compute" in again.stdout) == (stage == "batches"), again.stdout
    finally:
        (data / "class0" / "extra.png").unlink()


def test_two_writers_at_once_both_succeed_and_one_computes(data, reference, tmp_path):
    cache = tmp_path / "cache"
    env = user_env()
    procs = [subprocess.Popen(codes_cmd(data, cache), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("images to compute" in out for out, _ in outs) == 1, outs
    for got, want in zip(outputs_of(cache), sorted(reference)):
        assert_same_code_set(got, want)


def test_a_second_writer_waits_for_the_lock_or_refuses_with_no_wait(data, reference, tmp_path):
    cache = tmp_path / "cache"
    files = [cache / f.relative_to(f.parents[2]) for f in reference]
    with writer_lock(files[:1], note=None):
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


def test_a_lock_left_by_a_killed_run_does_not_block(data, reference, tmp_path):
    cache = tmp_path / "cache"
    killed = run(codes_cmd(data, cache), env={"CNN_CODES_FAULT": "locked"})
    assert killed.returncode == -signal.SIGKILL
    assert list(cache.rglob("*.lock"))  # the file stays; its lock died with the process
    again = run(codes_cmd(data, cache, "--no-wait"))
    assert again.returncode == 0, again.stderr
