import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
    CALTECH,
    CNN_CODES,
    needs_caltech,
    run_script,
    user_env,
    user_error_lines,
    write_code_file,
)

from pipeline.data import SPLIT_NAMES, TEST, TRAIN, VAL
from pipeline.errors import ParameterError
from pipeline.quality import audit
from pipeline.quality._audit import COPY, copy_threshold, duplicate_pairs, unit_rows
from pipeline.quality._neighbours import nearest_neighbours, top_k

quiet = dict(progress=False)


def synthetic_codes(path, n, dim, n_classes, seed=0, data_root="/nowhere"):
    """A code file in the stage-1 layout with ``n`` random codes near their class centres."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    X = centres[y] + rng.normal(0, 1.5, (n, dim)).astype(np.float32)
    split = rng.choice([TRAIN, VAL, TEST], n, p=[0.7, 0.15, 0.15])
    return write_code_file(path, X, y, split, [f"c{c}/{i}.jpg" for i, c in enumerate(y)],
                           [f"c{c}" for c in range(n_classes)], backbone="synthetic", layer="top", pooling="avg",
                           image_size=32, data_root=data_root)


def test_chunked_neighbours_equal_the_brute_force_ones():
    rng = np.random.default_rng(1)
    Z = unit_rows(rng.normal(size=(300, 12)))
    y = rng.integers(0, 4, 300)
    nb = nearest_neighbours(Z, y, k=5, chunk_bytes=13 * 300 * 7, progress=False)  # chunks of 7 rows
    S = Z @ Z.T
    np.fill_diagonal(S, -np.inf)
    want = np.argsort(-S, axis=1)[:, :5]
    np.testing.assert_array_equal(nb.index, want)
    np.testing.assert_allclose(nb.similarity, np.take_along_axis(S, want, 1), rtol=1e-5)
    S[y[:, None] == y[None, :]] = -np.inf
    np.testing.assert_array_equal(nb.other_index, S.argmax(1))
    assert (y[nb.other_index] != y).all()


@pytest.mark.parametrize("n", [50, 3000])
def test_top_k_of_rows_equals_a_full_sort(n):
    rng = np.random.default_rng(n)
    S = rng.random((40, n)).astype(np.float32)
    S[0] = 0.5  # ties everywhere: the sampled bound selects the whole row
    S[1, :7] = -np.inf
    S[2, 100 % n] = 2.0
    idx, vals = top_k(S, 10)
    np.testing.assert_array_equal(vals, -np.sort(-S, axis=1)[:, :10])
    np.testing.assert_array_equal(np.take_along_axis(S, idx, 1), vals)
    assert all(len(set(row)) == 10 for row in idx) and idx[2, 0] == 100 % n


def test_pairs_follow_the_two_thresholds_and_come_once():
    # 0 and 1: one class, almost the same; 2 (class 1) near 0 at a cross-class level; 3 far away.
    Z = unit_rows(np.array([[1, 0, 0], [1, 0.05, 0], [1, 0.6, 0], [0, 0, 1]], np.float32))
    y = np.array([0, 0, 1, 1])
    nb = nearest_neighbours(Z, y, k=3, progress=False)
    pairs = duplicate_pairs(nb, y, threshold=0.99, cross_threshold=0.8)
    # 0-1 within the class; 2's nearest in class 0 is 1 and 0's nearest in class 1 is 2: two pairs
    assert [(p.kind, p.a, p.b) for p in pairs] == [("within class", 0, 1), ("across classes", 1, 2),
                                                   ("across classes", 0, 2)]
    assert pairs[0].similarity > pairs[1].similarity > pairs[2].similarity > 0.8
    assert duplicate_pairs(nb, y, threshold=0.999, cross_threshold=0.9) == []


def test_where_every_image_is_close_to_its_own_class_only_closer_pairs_are_copies():
    """Two classes of images all alike (as tiny scans are: on scikit-learn's digits an image's
    nearest own-class image is at 0.985 for half of them): pairs across the classes at about 0.98
    are look-alikes or mutual, not copies; an exact copy across them still is one. Where classes
    are spread out, the threshold stays COPY."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=64)
    tight = [base + rng.normal(size=64) * s for s in (0.10, 0.10)]  # the two class centres, close
    Z = [c + rng.normal(size=64) * 0.05 for c in tight for _ in range(40)]
    Z.append(Z[3].copy())  # 80: an exact copy of image 3 (class 0) under class 1
    Z = unit_rows(np.array(Z, np.float32))
    y = np.array([0] * 40 + [1] * 40 + [1])
    nb = nearest_neighbours(Z, y, k=5, progress=False)
    copy = copy_threshold(nb, y)
    assert copy > COPY + 0.01, copy  # the set's own closeness, not the fixed 0.97
    pairs = duplicate_pairs(nb, y, threshold=0.999, cross_threshold=0.9)
    across = [p for p in pairs if p.kind == "across classes"]
    alike = [p for p in across if (p.a, p.b) != (3, 80)]
    assert len(alike) >= 10 and all(COPY <= p.similarity < copy for p in alike[:10])  # 0.97 would call these copies
    assert all(p.tier != "copy" for p in alike)
    assert [(p.tier, p.a, p.b) for p in across if p.tier == "copy"] == [("copy", 3, 80)]
    spread = unit_rows(np.array([rng.normal(size=64) * 3 + (i % 2) * 5 for i in range(80)], np.float32))
    assert copy_threshold(nearest_neighbours(spread, y[:80], k=5, progress=False), y[:80]) == COPY


def test_cross_class_pairs_are_ranked_copies_then_mutual_then_look_alikes():
    """A hub of class B that many class-A images resemble (look-alikes, up to cosine 0.93) is
    listed after a pair that are each other's nearest in the other class (0.86), and an exact
    copy across the classes comes first."""
    def at(cos, axis):  # a unit vector at cosine ``cos`` from e0, towards ``axis``
        v = np.zeros(8, np.float32)
        v[0], v[axis] = cos, np.sqrt(1 - cos ** 2)
        return v
    e = np.eye(8, dtype=np.float32)
    rows = [e[0]]                                                      # 0 (B): the hub
    rows += [at(c, k) for c, k in ((0.93, 1), (0.92, 2), (0.91, 3))]  # 1-3 (A): each nearest to the hub
    rows += [e[4], 0.86 * e[4] + np.sqrt(1 - 0.86 ** 2) * e[6]]        # 4 (A), 5 (B): each other's nearest
    rows += [e[7], e[7]]                                               # 6 (A), 7 (B): one photograph
    Z = unit_rows(np.array(rows, np.float32))
    y = np.array([1, 0, 0, 0, 0, 1, 0, 1])
    pairs = duplicate_pairs(nearest_neighbours(Z, y, k=3, progress=False), y, threshold=0.99, cross_threshold=0.8)
    ranked = [(p.tier, p.a, p.b) for p in pairs]
    assert ranked == [("copy", 6, 7), ("mutual", 0, 1), ("mutual", 4, 5), ("look-alike", 0, 2),
                      ("look-alike", 0, 3)], ranked
    assert pairs[2].similarity < pairs[3].similarity  # ranked above a more similar look-alike


def test_audit_options_are_checked_by_name(tmp_path):
    path = synthetic_codes(tmp_path / "c.h5", 50, 8, 3)
    for kw in (dict(threshold=1.5), dict(cross_threshold=-2), dict(neighbours=0), dict(folds=1),
               dict(outlier_fraction=2), dict(gallery=-1)):
        (name,) = kw
        with pytest.raises(ParameterError, match=f"^{name} "):
            audit(path, runs_dir=tmp_path / 'runs', **kw)
    r = run_script("audit", "--codes", path, "--cross-threshold", "2", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and user_error_lines(r.stderr) == [
        "error: --cross-threshold 2.0: a cosine similarity is between -1 and 1"], r.stderr
    r = run_script("audit", "--codes", tmp_path / "missing.h5", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and len(user_error_lines(r.stderr)) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_audit_of_100k_codes_stays_under_2_gb(tmp_path):
    """The whole command on 100,000 synthetic codes, its peak memory measured by a parent process
    that has no other child."""
    path = synthetic_codes(tmp_path / "big.h5", 100_000, 64, 20, seed=3)
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr)")
    r = subprocess.run([sys.executable, "-c", probe, CNN_CODES, "audit", "--codes", str(path), "--runs-dir",
                        str(tmp_path / "runs"), "--no-progress", "--gallery", "0"],
                       capture_output=True, text=True, env=user_env(), timeout=900)
    code, peak_kb = map(int, r.stdout.split())
    assert code == 0, r.stderr
    assert peak_kb * 1024 < 2e9, f"peak memory {peak_kb / 1e6:.2f} GB"
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "audit.json").read_text())
    assert summary["images"] == 100_000 and summary["outliers"] == 1000
    with open(run / "outliers.csv") as fh:
        assert sum(1 for _ in fh) == 1001


# Caltech-101 classes in which a full audit of the data set (Lite0 codes, default settings) finds
# no near-duplicate and no likely label error: what the audit finds here is what was planted.
CLEAN = ("accordion", "camera", "cup", "dalmatian", "ferry", "laptop", "sunflower", "helicopter", "hedgehog", "pizza")


@pytest.mark.slow
@needs_caltech
def test_audit_finds_planted_duplicates_and_flipped_labels(tmp_path):
    from pipeline.codes import generate_codes

    data = tmp_path / "data"
    for c in CLEAN:
        (data / c).mkdir(parents=True)
        for f in sorted((CALTECH / c).iterdir())[:50]:
            (data / c / f.name).symlink_to(f)
    rng = np.random.default_rng(0)
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jpg"))
    picked = rng.choice(len(files), 18, replace=False)
    planted_pairs, flipped, relabelled = set(), set(), set()
    for n, i in enumerate(picked):
        src = files[i]
        cls, name = src.split("/")
        other = CLEAN[(CLEAN.index(cls) + 1 + n % 9) % 10]
        if n < 4:  # a copy in another class
            dst = f"{other}/copy_{name}"
            relabelled |= {src, dst}
        elif n < 8:  # a copy in the same class, under another name (often in another part of the split)
            dst = f"{cls}/copy_{name}"
        else:  # 10 of the 500 originals, 2%: label flipped
            dst = f"{other}/flipped_{name}"
            (data / dst).symlink_to((data / src).resolve())
            (data / src).unlink()
            flipped.add(dst)
            continue
        shutil.copyfile(data / src, data / dst)
        planted_pairs.add(frozenset((src, dst)))
    codes = generate_codes(data, "efficientnet_lite0", cache_dir=tmp_path / "cache", **quiet)[0]
    run = audit(codes, runs_dir=tmp_path / 'runs').path

    with open(run / "duplicates.csv") as fh:
        pairs = list(csv.DictReader(fh))
    found = {frozenset((r["path_a"], r["path_b"])) for r in pairs}
    assert len(found & planted_pairs) >= 0.9 * len(planted_pairs)
    assert len(found - planted_pairs) < len(planted_pairs)
    for r in pairs:  # pairs in different parts of the split are marked as leakage
        assert (r["leakage"] == "yes") == (r["split_a"] != r["split_b"])
        assert r["split_a"] in SPLIT_NAMES and r["split_b"] in SPLIT_NAMES
    assert any(r["leakage"] == "yes" and frozenset((r["path_a"], r["path_b"])) in planted_pairs for r in pairs)
    cross = {frozenset((r["path_a"], r["path_b"])) for r in pairs if r["kind"] == "across classes"}
    assert sum(1 for p in planted_pairs if p & relabelled and p in cross) >= 3

    with open(run / "label_issues.csv") as fh:
        issues = list(csv.DictReader(fh))
    flagged = {r["path"] for r in issues}
    assert len(flagged & flipped) >= 0.9 * len(flipped)
    assert len(flagged - flipped - relabelled) < len(flipped)
    by_path = {r["path"]: r for r in issues}
    for p in flagged & flipped:  # the class it was taken from is suggested
        assert by_path[p]["given_class"] == p.split("/")[0]
        assert by_path[p]["suggested_class"] != by_path[p]["given_class"]
    html = (run / "report.html").read_text()
    across = lambda r: r["kind"] == "across classes"
    shown = sum(min(48, sum(1 for r in pairs if keep(r))) for keep in (
        lambda r: r["leakage"] == "yes", lambda r: across(r) and r["tier"] != "look-alike",
        lambda r: across(r) and r["tier"] == "look-alike", lambda r: r["kind"] == "within class"))
    assert html.count('<div class="pair"') == shown
    # look-alikes (likely different photographs) folded in a section of their own, after the likely copies
    folded = html[html.index('<section id="look-alikes">'):].split("</section>")[0]
    assert "<details>" in folded and html.index('id="across-classes"') < html.index('id="look-alikes"')
    assert folded.count('<div class="pair"') == min(48, sum(1 for r in pairs if across(r) and r["tier"] == "look-alike"))
    assert html.count('<img src="data:image/jpeg;base64,') == 2 * shown + min(48, len(issues)) + 5  # 1% of 508


@pytest.mark.slow
@needs_caltech
def test_audit_finds_the_faces_faces_easy_pairs_with_its_defaults(tmp_path):
    """Caltech-101's Faces_easy are croppings of its Faces photographs (same file names)."""
    from pipeline.codes import generate_codes

    data = tmp_path / "faces"
    data.mkdir()
    for c in ("Faces", "Faces_easy", "Leopards"):
        (data / c).symlink_to(CALTECH / c)
    codes = generate_codes(data, "efficientnet_lite0", cache_dir=tmp_path / "cache", **quiet)[0]
    r = run_script("audit", "--codes", codes, "--runs-dir", tmp_path / "runs", "--no-progress", "--gallery", "12")
    assert r.returncode == 0, r.stderr
    assert "Faces/Faces_easy" in r.stdout
    run = next((tmp_path / "runs").iterdir())
    with open(run / "duplicates.csv") as fh:
        cross = [row for row in csv.DictReader(fh) if row["kind"] == "across classes"]
    same_photo = {row["path_a"].split("/")[1] for row in cross
                  if {row["class_a"], row["class_b"]} == {"Faces", "Faces_easy"}
                  and row["path_a"].split("/")[1] == row["path_b"].split("/")[1]}
    assert len(same_photo) >= 250  # of 435
    order = [("copy", "mutual", "look-alike").index(row["tier"]) for row in cross]
    assert order == sorted(order)  # copies, then mutual pairs (one photograph, two labels), then look-alikes
    mutual = [row for row in cross if row["tier"] == "mutual"]
    assert len(mutual) >= 200
    assert sum(row["path_a"].split("/")[1] == row["path_b"].split("/")[1] for row in mutual) >= 0.85 * len(mutual)
    summary = json.loads((run / "audit.json").read_text())
    assert summary["class_pairs"][0]["classes"] == ["Faces", "Faces_easy"]
