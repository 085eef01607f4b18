"""Stage 1 with the layouts: labels never cost a code, a code set belongs to one folder, a stored
split is never replaced silently, the first line says how labels were read."""
import csv
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from helpers import FAST, make_images, run_script, user_error_lines

from pipeline.cli.main import main, run_cli
from pipeline.codes import CodeSet, generate_codes, parts_dir
from pipeline.data import TEST, TRAIN, UNLABELLED, VAL
from pipeline.runs import train


def computed(data, **kw) -> int:
    stats = {}
    generate_codes(data, stats=stats, **kw)
    return stats.get("images", 0)


def labelled_folder(root, n_classes=3, per_class=8):
    """Images of ``n_classes`` colours in one flat folder with a labels.csv naming each."""
    make_images(root / "src", n_classes, per_class)
    rows = []
    for i, p in enumerate(sorted((root / "src").rglob("*.*"))):
        name = f"photo{i:03d}{p.suffix}"
        shutil.move(p, root / name)
        rows.append((name, p.relative_to(root / "src").parts[0]))
    shutil.rmtree(root / "src")
    write_labels(root / "labels.csv", rows)
    return rows


def write_labels(path, rows, header=("image", "label")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def part_stamps(code_file):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_dir(code_file).iterdir()}


@pytest.mark.slow
def test_relabelling_computes_nothing_and_rewrites_only_the_index(logs, tmp_path):
    data = tmp_path / "photos"
    rows = labelled_folder(data)
    kw = dict(FAST, cache_dir=tmp_path / "cache")
    path = generate_codes(data, **kw)[0]
    assert logs[0].startswith("layout: labels file labels.csv (image column 'image', label column 'label'")
    before, stamps = CodeSet(path), part_stamps(path)
    codes_before = before.X.copy()
    assert np.abs(codes_before).max() > 0.01

    edited = [(n, "class2" if i < 10 else c) for i, (n, c) in enumerate(rows)]  # 10 labels changed
    edited = edited[:-3]  # and 3 images no longer listed: unlabelled
    write_labels(data / "labels.csv", edited)
    logs.clear()
    assert computed(data, **kw) == 0
    assert any(f"0 of {len(rows)} images to compute" in line for line in logs), logs
    assert part_stamps(path) == stamps  # no part written again
    after = CodeSet(path)
    np.testing.assert_array_equal(after.X, codes_before)  # the same codes, row for row
    want = {n: after.class_names.index(c) for n, c in edited}
    assert {p: int(y) for p, y in zip(after.paths, after.y) if y >= 0} == want  # the new labels are read
    unlisted = [n for n, _ in rows[-3:]]
    assert all(after.y[after.paths.index(n)] == -1 and after.split[after.paths.index(n)] == UNLABELLED
               for n in unlisted)
    run = train(path, "logreg", runs_dir=tmp_path / "runs")
    assert run.record["n_train"] + run.record["n_val"] + run.record["n_test"] == len(edited)
    assert not set(unlisted) & set(run.record["test_paths"])


@pytest.mark.slow
def test_two_folders_of_one_name_have_their_own_code_sets(tmp_path):
    a, b = tmp_path / "a" / "images", tmp_path / "b" / "images"
    make_images(a, 3, 6, seed=1)
    make_images(b, 2, 9, seed=2)
    kw = dict(FAST, cache_dir=tmp_path / "cache")
    fa, fb = generate_codes(a, **kw)[0], generate_codes(b, **kw)[0]
    assert fa.parent.parent.name == "images" and fb.parent.parent.name.startswith("images-") and fa != fb
    assert computed(a, **kw) == 0 and computed(b, **kw) == 0  # neither replaced the other's codes
    assert CodeSet(fa).class_names == ["class0", "class1", "class2"] and len(CodeSet(fb)) == 18
    runs = [train(CodeSet(f), "logreg", runs_dir=tmp_path / "runs") for f in (fa, fb)]
    assert [r.record["data_root"] for r in runs] == [str(a.resolve()), str(b.resolve())]

    moved = tmp_path / "b" / "renamed"
    os.rename(b, moved)  # a renamed folder keeps its codes
    assert computed(moved, **kw) == 0
    assert generate_codes(moved, **kw)[0] == fb and CodeSet(fb).data_root == moved.resolve()


@pytest.mark.slow
def test_cli_names_the_layout_first_and_keeps_the_stored_split(tmp_path):
    data = tmp_path / "kaggle"
    for s in ("training_set", "test_set"):
        make_images(data / s, 2, 6, seed=len(s))
    common = ["--data", data, "--weights", "none", "--image-size", 32, "--cache-dir", tmp_path / "cache",
              "--no-progress"]
    first = run_script("codes", *common)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == ("layout: split folders training_set/ test_set/ (validation drawn from "
                                            "training_set/; 2 classes)")
    code_file = next((tmp_path / "cache").rglob("top_activation-avg.h5"))
    cs = CodeSet(code_file)
    assert {p for p, s in zip(cs.paths, cs.split) if s == TEST} == {p for p in cs.paths if p.startswith("test_set/")}
    stamp = code_file.stat().st_mtime_ns

    other = run_script("codes", *common, "--split", "50/50")
    assert other.returncode == 2 and len(user_error_lines(other.stderr)) == 1, other.stderr
    assert "holds a split drawn with --split 70/15/15 --seed 0, not --split 50/0/50" in other.stderr
    assert "--resplit" in other.stderr and code_file.stat().st_mtime_ns == stamp  # untouched
    seed = run_script("codes", *common, "--seed", "3")
    assert seed.returncode == 2 and "--seed 0, not --split 70/15/15 --seed 3" in seed.stderr

    again = run_script("codes", *common, "--split", "50/50", "--resplit")
    assert again.returncode == 0, again.stderr
    assert "0 of 24 images to compute" in again.stdout
    cs = CodeSet(code_file)
    assert not (cs.split == VAL).any() and set(cs.split[[p.startswith("test_set/") for p in cs.paths]]) == {TEST}
    kept = run_script("codes", *common)  # no --split: the stored one (50/50), not the default
    assert kept.returncode == 0 and np.array_equal(CodeSet(code_file).split, cs.split)


@pytest.mark.parametrize("case", ["unknown columns", "empty", "no existing image", "latin-1", "empty label cell",
                                  "pattern matches nothing", "bad regex"])
def test_bad_labels_give_one_error_line_and_leave_the_cache_untouched(tmp_path, case, capsys):
    data = tmp_path / "photos"
    rows = labelled_folder(data, 2, 4)
    cache = tmp_path / "cache"
    common = ["--data", data, "--weights", "none", "--image-size", 32, "--cache-dir", cache, "--no-progress"]
    generate_codes(data, **dict(FAST, cache_dir=cache))
    code_file = next(cache.rglob("top_activation-avg.h5"))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    labels, extra = data / "labels.csv", ["--labels", data / "labels.csv"]
    if case == "unknown columns":
        write_labels(labels, rows, header=("what", "ever"))
    elif case == "empty":
        labels.write_text("")
    elif case == "no existing image":
        write_labels(labels, [("nothere.jpg", "a"), ("nowhere.jpg", "b")])
    elif case == "latin-1":
        labels.write_bytes(("image,label\n" + "".join(f"{n},caf\xe9\n" for n, _ in rows)).encode("latin-1"))
    elif case == "empty label cell":
        write_labels(labels, [(n, "" if i == 2 else c) for i, (n, c) in enumerate(rows)])
    elif case == "pattern matches nothing":
        extra = ["--label-pattern", r"^(\d+)\.tif$"]
    elif case == "bad regex":
        extra = ["--label-pattern", "(unclosed"]
    with pytest.raises(SystemExit) as exit_:  # the command line, in this process (the same code as cnn-codes)
        run_cli(main, ["codes", *map(str, common + extra)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(user_error_lines(err)) == 1 and err.count("\n") == 1, err
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == before
    with h5py.File(code_file) as f:
        assert len(f["paths"]) == len(rows)


@pytest.mark.slow
def test_unlabelled_folder_codes_then_train_refuses(tmp_path):
    data = tmp_path / "pool"
    make_images(data, 2, 5)
    for i, p in enumerate(sorted(data.rglob("*.*"))):
        p.rename(data / f"{i:02d}-{p.name}")
    for d in ("class0", "class1"):
        shutil.rmtree(data / d)
    common = ["--data", data, "--weights", "none", "--image-size", 32, "--cache-dir", tmp_path / "cache"]
    refused = run_script("codes", *common, "--no-progress")
    assert refused.returncode == 2 and "--layout unlabelled" in refused.stderr
    made = run_script("codes", *common, "--no-progress", "--layout", "unlabelled")
    assert made.returncode == 0 and made.stdout.startswith("layout: unlabelled images (10;"), made.stdout
    cs = CodeSet(next((tmp_path / "cache").rglob("*.h5")))
    assert len(cs) == 10 and set(cs.split) == {UNLABELLED} and set(cs.y) == {-1}
    r = run_script("train", *common, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and user_error_lines(r.stderr) == [l for l in r.stderr.splitlines() if l], r.stderr
    assert "none of its 10 images has a label (layout unlabelled)" in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert TRAIN not in set(cs.split)


@pytest.mark.slow
def test_a_stored_split_in_an_unreadable_form_is_one_error_and_resplit_mends_it(tmp_path):
    from pipeline.errors import UserError

    data = make_images(tmp_path / "d", 2, 6)
    kw = dict(FAST, cache_dir=tmp_path / "cache")
    path = generate_codes(data, **kw)[0]
    with h5py.File(path, "r+") as f:
        f.attrs["split_fractions"] = "not json"
    with pytest.raises(UserError, match="states its split in a form this version cannot read.*--resplit"):
        generate_codes(data, **kw)
    assert computed(data, resplit=True, **kw) == 0  # the codes kept, the split drawn anew
    with h5py.File(path) as f:
        assert json.loads(f.attrs["split_fractions"]) == [0.7, 0.15, 0.15]
