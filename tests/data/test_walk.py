"""The walk and stat of a data folder shared with helper processes (pipeline.data._walk): the same
result whoever does the work, and a helper that fails, or a run interrupted, costs nothing but
time and leaves no process behind."""
import os
import subprocess
import sys
import time

import pytest

from pipeline.data import _scan, _walk, scan, walk_images
from pipeline.data._scan import fingerprints

NON_UTF8 = os.fsdecode(b"d\xff")  # a folder name that is not UTF-8 (a str with a surrogate)


@pytest.fixture
def started(monkeypatch):
    """Every helper process started during the test."""
    made = []

    class Recorded(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_walk.subprocess, "Popen", Recorded)
    return made


@pytest.fixture
def done_here(monkeypatch, started):
    """Helpers start at once, and this process takes 50 ms a job, so that helpers take part; the
    kinds of the jobs this process did."""
    monkeypatch.setattr(_walk, "START_AFTER", 0.0)
    monkeypatch.setattr(_walk, "_cores", lambda: 2)
    real, kinds = _walk._do, []

    def slow(job):
        time.sleep(0.05)
        kinds.append(job[0])
        return real(job)

    monkeypatch.setattr(_walk, "_do", slow)
    return kinds


def _hostile_tree(root):
    """Eight class folders with what a walk passes over or lists specially: nested folders,
    hidden and other files, a pipe, a link to nowhere, a name that is not UTF-8, an empty class."""
    for c in range(8):
        for i in range(5 + c):
            path = root / f"class{c}" / ("sub/" if i % 4 == 3 else "") / f"img{i}.{('jpg', 'PNG', 'jpeg')[i % 3]}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * (c * 100 + i + 1))  # (only walked and stat'ed: any bytes)
    (root / "class0" / "deeper" / "deepest").mkdir(parents=True)
    for name in ("deeper/a.jpg", "deeper/deepest/b.png", "deeper/c.txt", ".hidden.jpg"):
        (root / "class0" / name).write_bytes(b"x" * 7)
    os.mkfifo(root / "class1" / "pipe.jpg")
    (root / "class2" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (root / os.fsdecode(b"class3/\xfe.jpg")).write_bytes(b"x")
    (root / "class9").mkdir()
    return root


def _listing(ds):
    return (list(ds.paths), ds.labels.tolist(), ds.fingerprints.tolist(), ds.class_names, ds.skipped,
            ds.empty_classes, ds.unnamable)


def test_a_scan_shared_with_helpers_gives_what_it_gives_alone(tmp_path, monkeypatch, done_here, started):
    root = _hostile_tree(tmp_path / NON_UTF8 / "data")
    with monkeypatch.context() as alone:
        alone.setattr(_walk, "_cores", lambda: 1)
        expected = scan(root)
    assert not started and len(done_here) == 9  # (alone: every job here)
    done_here.clear()
    shared = scan(root)
    assert _listing(shared) == _listing(expected)
    assert 0 < len(done_here) < 9 and len(started) == 1  # the helper walked some class folders, this process others
    assert "class1/pipe.jpg" not in shared.paths and "class2/gone.jpg" in shared.paths
    assert shared.skipped == {"special file": 1, ".txt": 1, "hidden": 1} and shared.empty_classes == ("class9",)
    assert [reason for _, reason in shared.unnamable] == ["file name is not valid UTF-8"]
    assert shared.fingerprints[list(shared.paths).index("class2/gone.jpg")].tolist() == [-1, -1]
    assert all(p.returncode == 0 for p in started)  # (ended, and ended well: its input closed)


@pytest.mark.parametrize("layout", ["classes", "train/val/test"])
def test_a_walk_of_a_whole_tree_shared_with_helpers_gives_what_it_gives_alone(tmp_path, done_here, started, layout):
    """Sub-folders walked as jobs: those one level down (nine classes), or two under fewer than
    eight (train/val/test, each with its classes), put back in the order of sorted paths."""
    root = tmp_path / "data"
    if layout == "classes":
        _hostile_tree(root)
        (root / "top.jpg").write_bytes(b"loose")  # (an image beside the folders: walked here)
    else:
        for part in ("train", "val", "test"):
            _hostile_tree(root / part)
        (root / "train" / "loose.png").write_bytes(b"x")
    alone = _walk._walk_all(str(root), ".")
    done_here.clear()
    shared = walk_images(root)
    assert shared == alone and len(shared[0]) > 40
    jobs = 9 if layout == "classes" else 27
    assert 0 < done_here.count("tree") < jobs and len(started) == 1  # (the helper walked some)
    assert shared[0] == [p.relative_to(root).as_posix() for p in sorted(root.joinpath(p) for p in shared[0])]


def test_many_small_jobs_are_packed_into_batches(tmp_path, monkeypatch, done_here, started):
    """More jobs than MAX_JOBS (a folder per person of a face data set) go in batches of
    neighbours, each one round trip to a helper; the listing is the same."""
    root = _hostile_tree(tmp_path / "data")
    with monkeypatch.context() as alone:
        alone.setattr(_walk, "_cores", lambda: 1)
        expected = _listing(scan(root))
    monkeypatch.setattr(_walk, "MAX_JOBS", 4)
    done_here.clear()
    assert _listing(scan(root)) == expected
    assert 0 < done_here.count("batch") < 3 and len(started) == 1  # 9 jobs in 3 batches: the helper took some


def test_fingerprints_in_slices_shared_with_helpers(tmp_path, monkeypatch, done_here, started):
    root = _hostile_tree(tmp_path / "data")
    paths = list(scan(root).paths) + ["class0/missing.jpg"]
    done_here.clear()
    monkeypatch.setattr(_scan, "STAT_SLICE", 4)
    shared = fingerprints(root, paths)
    assert shared.shape == (len(paths), 2) and 0 < len(done_here) < -(-len(paths) // 4)
    sizes = [os.stat(root / p).st_size if (root / p).exists() else -1 for p in paths]
    assert shared[:, 0].tolist() == sizes and sizes.count(-1) == 2 and max(sizes) > 0
    assert shared[:, 1].tolist() == [os.stat(root / p).st_mtime_ns if (root / p).exists() else -1 for p in paths]


@pytest.mark.parametrize("helper", ["import sys; sys.exit(3)",
                                    ("import sys; sys.stdin.buffer.read(8); sys.stdout.buffer.write(b'\\5' + bytes(7) "
                                     "+ b'\\xff' * 5); sys.stdout.flush()")])
def test_a_helper_that_dies_or_garbles_its_answer_leaves_its_jobs_to_this_process(tmp_path, monkeypatch, done_here,
                                                                                   started, helper):
    root = _hostile_tree(tmp_path / "data")
    with monkeypatch.context() as alone:
        alone.setattr(_walk, "_cores", lambda: 1)
        expected = _listing(scan(root))
    fake = tmp_path / "helper.py"
    fake.write_text(helper)
    monkeypatch.setattr(_walk, "__file__", str(fake))
    done_here.clear()
    assert _listing(scan(root)) == expected
    assert len(done_here) == 9 and len(started) == 1 and started[0].returncode is not None


def test_an_interrupted_walk_kills_its_helpers_at_once(tmp_path, monkeypatch, started):
    """Ctrl-C (or SIGTERM, which the command turns into it) while a helper works on a long job:
    the run ends without waiting for the helper, which is killed."""
    root = _hostile_tree(tmp_path / "data")
    fake = tmp_path / "helper.py"
    fake.write_text("import sys, time; sys.stdin.buffer.read(8); time.sleep(600)")  # a job that never ends
    monkeypatch.setattr(_walk, "__file__", str(fake))
    monkeypatch.setattr(_walk, "START_AFTER", 0.0)
    monkeypatch.setattr(_walk, "_cores", lambda: 2)
    real, calls = _walk._do, []

    def interrupted(job):
        calls.append(job)
        if len(calls) > 1:
            raise KeyboardInterrupt
        time.sleep(1.0)  # meanwhile the helper starts and takes a job from the back
        return real(job)

    monkeypatch.setattr(_walk, "_do", interrupted)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _walk.run([("stat", str(root), ["class0/img0.jpg"])] * 20)
    assert time.perf_counter() - t0 < 20
    assert len(started) == 1 and started[0].returncode is not None  # (killed: it would have slept 600 s)


def test_a_helper_runs_without_the_package():
    """The helper is this file run by its path in an isolated interpreter: it must not need the
    package (nor anything outside the standard library)."""
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='probe'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'numpy', 'h5py')))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, _walk.__file__], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
