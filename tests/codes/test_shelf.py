"""Stage 1's listing on the shelf: read back exactly, and not held in memory while computing."""
import dataclasses
import json
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import STAGE1_ATTRS, synthetic_folder

from pipeline.codes import _shelf
from pipeline.codes._plan import make_plan
from pipeline.codes._shelf import Shelf, ShelvedPaths, shelved
from pipeline.codes._worker import _Stream
from pipeline.data import PathList, assign_split


def test_shelved_columns_give_back_any_rows_in_any_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_shelf, "WINDOW", 7)  # many windows, and rows asked for across them
    rng = np.random.default_rng(0)
    shelf = Shelf(tmp_path)
    try:
        values = rng.integers(-10**15, 10**15, size=(1000, 2))
        column = shelf.put([values[:300], values[300:]], np.int64, (2,))  # written in pieces
        names = PathList.of([f"c{i % 3}/{'é' * (i % 5)}{i}\udcff.jpg" for i in range(1000)])
        paths = ShelvedPaths.put(shelf, [names[100:400], names[400:]])  # views of a list, not from its start
        assert len(column) == 1000 and column.shape == (1000, 2) and len(paths) == 900
        for at in (rng.permutation(900)[:400], np.arange(50, 250), np.array([899, 0, 899, 3]), np.zeros(0, int)):
            assert np.array_equal(column[at], values[at])
            assert paths.take(at) == list(names[100:].take(at))
        assert column[5].tolist() == values[5].tolist()
        assert paths[3] == names[103] and paths.max_bytes() == names[100:].max_bytes()
        assert not list(tmp_path.iterdir())  # an anonymous file: nothing left whatever ends the run
    finally:
        shelf.close()


@pytest.mark.parametrize("update", [False, True])
def test_a_shelved_plan_gives_the_same_work_and_data_set_and_pickles_as_the_partition(update, tmp_path, monkeypatch):
    monkeypatch.setattr(_shelf, "WINDOW", 1000)
    ds = synthetic_folder(tmp_path, 5000)
    targets = (np.arange(5000)[:, None] % np.array([2, 3, 5]) == 0).astype(np.uint8)
    ds = dataclasses.replace(ds, targets=targets)  # and multi-label targets
    plan = make_plan(ds, [tmp_path / "x.h5"], [STAGE1_ATTRS], target=256)
    if update:  # (as an update computes: some of the images)
        for o in plan.outputs:
            o.cached[::3] = True
        plan = dataclasses.replace(plan, partitions=[
            dataclasses.replace(p, paths=p.paths.take(keep), fingerprints=p.fingerprints[keep], images=p.images[keep])
            for p in plan.partitions for keep in [p.images % 3 != 0]])
    planned = [(p.id, list(p.paths), p.fingerprints.copy(), p.images.copy()) for p in plan.partitions]
    listing = ds.paths, ds.fingerprints, ds.labels, ds.targets
    paths, fingerprints, labels, targets = list(ds.paths), ds.fingerprints.copy(), ds.labels.copy(), ds.targets.copy()
    plan = dataclasses.replace(plan, pending=plan.partitions[3:])  # (as after an interruption: some already staged)
    given = plan
    with shelved(plan, tmp_path) as plan:
        ds = plan.ds
        assert plan is not given and given.ds.paths is listing[0]  # (a new plan: the one given is not changed)
        assert len(plan.partitions) == len(planned) > 10 and plan.pending == plan.partitions[3:]
        for p, (pid, p_paths, p_fingerprints, p_images) in zip(plan.partitions, planned):
            loaded = p.load()
            assert (p.id, len(p)) == (pid, len(p_paths)) and p.paths == p_paths
            assert loaded.paths == p_paths and np.array_equal(loaded.fingerprints, p_fingerprints)
            assert np.array_equal(loaded.images, p_images) and np.array_equal(p.images, p_images)
            sent = pickle.loads(pickle.dumps(p))  # (as a Ray worker is sent it)
            assert type(sent).__name__ == "Partition" and sent.paths == p_paths
        # the data set's listing: shelved where the work is all of it, else kept as it was
        assert all((now is then) == update for now, then in zip((ds.paths, ds.fingerprints, ds.labels, ds.targets),
                                                                 listing))
        at = np.random.default_rng(1).permutation(5000)[:2000]
        assert len(ds) == 5000 and ds.paths.take(at) == [paths[i] for i in at]
        assert np.array_equal(ds.fingerprints[at], fingerprints[at]) and np.array_equal(ds.labels[at], labels[at])
        assert np.array_equal(ds.targets[at], targets[at]) and ds.targets.shape == (5000, 3) and ds.multi_label
        image = int(planned[5][3][7])
        assert plan.partitions[5].positions([paths[image], "elsewhere.jpg"]).tolist() == [image, -1]


def held(tmp_path, n: int) -> tuple[int, int]:
    """Python's memory (tracemalloc: NumPy's arrays included) that a build of ``n`` images holds
    once planned, with its split drawn: before its listing is shelved, and after (what it holds
    while computing)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ds = synthetic_folder(tmp_path, n)
        plan = make_plan(ds, [tmp_path / f"cache{n}" / "x.h5"], [STAGE1_ATTRS])
        split = assign_split(ds)
        before = tracemalloc.get_traced_memory()[0] - base
        del ds  # (handed to the plan, which the shelf takes)
        with shelved(plan, tmp_path) as plan:
            after = tracemalloc.get_traced_memory()[0] - base
            assert sum(len(p) for p in plan.pending) == len(split) == n
        return before, after
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_while_a_build_computes_it_holds_no_listing_per_image(tmp_path):
    """Planned, a build holds its listing (paths, fingerprints, labels, the partitions'
    positions: about 50 bytes an image); shelved, what it holds while computing grows by the
    split and a flag an image (2 bytes), whatever the data set's size."""
    held(tmp_path, 1000)  # (modules imported on first use not counted in what follows)
    (before_s, after_s), (before_l, after_l) = held(tmp_path, 20_000), held(tmp_path, 80_000)
    assert (before_l - before_s) / 60_000 > 40, (before_s, before_l)  # (the measure sees the listing)
    grows = (after_l - after_s) / 60_000
    assert 1 <= grows < 4, (after_s, after_l, grows)  # (and the split it keeps: not ~0)


def test_the_stream_of_a_worker_holds_a_few_partitions_at_a_time(tmp_path):
    ds = synthetic_folder(tmp_path, 3000)
    plan = make_plan(ds, [tmp_path / "x.h5"], [STAGE1_ATTRS], target=128)
    expected = list(ds.paths.take(np.concatenate([p.images for p in plan.partitions])))
    with shelved(plan, tmp_path) as plan:
        stream, most = _Stream(plan.partitions), 0
        ends = set((stream.first + [len(p) for p in plan.partitions] - 1).tolist())
        got = []
        for i in range(len(stream)):
            got.append(stream[i])
            most = max(most, len(stream._held))
            if i in ends:  # the worker lets a partition go once its last image is written
                stream.let_go(int(np.searchsorted(stream.first, i, side="right")) - 1)
        assert got == expected and len(plan.partitions) > 10 and most == 1 and not stream._held


# Run in a process of its own: its resident memory (VmRSS) with 400,000 images planned, then shelved;
# with argument "cli", in a process set up as the command-line tool sets up its own.
SHELVED_RSS = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "cli":
    from pipeline.cli.codes import keep_freed_blocks_returnable
    keep_freed_blocks_returnable()
from helpers import STAGE1_ATTRS, synthetic_folder
from pipeline.codes._plan import make_plan
from pipeline.codes._shelf import shelved
from pipeline.data import assign_split

def rss():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

folder = Path(tempfile.mkdtemp())
synthetic_folder(folder, 1000)  # (modules imported on first use)
base, n = rss(), 400_000
ds = synthetic_folder(folder, n)
plan = make_plan(ds, [folder / "cache" / "x.h5"], [STAGE1_ATTRS])
split = assign_split(ds)
planned = rss() - base
del ds
with shelved(plan, folder) as plan:
    print(json.dumps({"planned": planned / n, "shelved": (rss() - base) / n}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_the_memory_the_listing_held_goes_back_to_the_system(tmp_path):
    """Freed, the listing stayed in the process (glibc keeps memory freed amid its heap, and the
    computing allocates in threads of its own, which do not reuse it): at a million images a
    build computed with 50 MB more than it held. In the command-line tool's process (glibc's
    mmap threshold fixed there, the library leaves it alone), once shelved, it is given back."""
    def per_image(setup):
        done = subprocess.run([sys.executable, "-c", SHELVED_RSS, str(Path(__file__).parents[1]), setup],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    cli, library = per_image("cli"), per_image("library")
    assert cli["planned"] > 40, cli  # (the measure sees the listing and the plan)
    assert cli["shelved"] < 30, cli  # (about 14 here)
    assert library["shelved"] > 40, library  # (about 57 in a process that leaves glibc as it is: the setting matters)
