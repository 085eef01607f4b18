"""Real photos (a Caltech-101 subset from ../shared) laid out the ways users bring them: class
folders, split folders (with and without a validation folder), a labels CSV (paths, bare names,
ids without extension) and labels in file names give the same classes and, for the same split,
the same test accuracy. Skips cleanly where ../shared is absent."""
import csv

import numpy as np
import pytest
from helpers import CALTECH, needs_caltech

from pipeline.codes import CodeSet, generate_codes
from pipeline.data import SPLIT_NAMES, TEST, stratified_split
from pipeline.runs import train

# Classes that look alike, so that accuracy is far from 1 and equal accuracies mean something.
CLASSES = ("cougar_body", "cougar_face", "crayfish", "crocodile", "crocodile_head", "lobster")
PER_CLASS = 15
pytestmark = [pytest.mark.slow, needs_caltech]


def photos():
    return {c: sorted(p for p in (CALTECH / c).iterdir() if p.suffix == ".jpg")[:PER_CLASS] for c in CLASSES}


def link(dst, src):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def fit(data, tmp_path, **reading):
    files = generate_codes(data, "efficientnet_lite0", cache_dir=tmp_path / "cache", progress=False, **reading)
    cs = CodeSet(files[0])
    run = train(cs, "logreg", runs_dir=tmp_path / "runs")
    return cs, run


def assert_labels(cs, key):
    """Every image's label is the class its photo came from (``key(path)`` = (class, photo))."""
    wrong = [p for p, y in zip(cs.paths, cs.y) if cs.class_names[y] != key(p)[0]]
    assert not wrong and len(cs.paths) == len(CLASSES) * PER_CLASS, wrong[:3]


def predictions(run, key):
    """{(class, photo file name): predicted class} of a run's test images."""
    with open(run.path / "predictions.csv") as fh:
        return {key(r["path"]): r["predicted"] for r in csv.DictReader(fh)}


def test_every_layout_of_the_same_photos_gives_the_same_classes_and_accuracy(tmp_path):
    source = photos()
    folders = tmp_path / "as_folders"
    for c, files in source.items():
        for f in files:
            link(folders / c / f.name, f)
    ref_cs, ref = fit(folders, tmp_path)
    split = {(p.split("/")[0], p.split("/")[1]): SPLIT_NAMES[s] for p, s in zip(ref_cs.paths, ref_cs.split)}
    acc = ref.metrics["accuracy"]
    assert 0.4 <= acc < 1 and ref_cs.class_names == list(CLASSES)
    results = {"class folders": acc}
    predicted = predictions(ref, lambda p: tuple(p.split("/")))
    assert_labels(ref_cs, lambda p: tuple(p.split("/")))

    # split folders with a validation folder: the stored split is the folders', the same as above
    with_val = tmp_path / "split_folders"
    for (c, name), s in split.items():
        link(with_val / {"train": "train", "val": "valid", "test": "test"}[s] / c / name, source[c][0].parent / name)
    cs, run = fit(with_val, tmp_path)
    assert cs.class_names == list(CLASSES)
    assert {(p.split("/")[1], p.split("/")[2]): SPLIT_NAMES[s] for p, s in zip(cs.paths, cs.split)} == split
    results["split folders"] = run.metrics["accuracy"]
    assert predictions(run, lambda p: tuple(p.split("/")[1:])) == predicted  # image for image
    assert_labels(cs, lambda p: tuple(p.split("/")[1:]))

    # split folders without one: validation drawn from train/, the test folder's images are the test split
    no_val = tmp_path / "train_test"
    for (c, name), s in split.items():
        link(no_val / ("test_set" if s == "test" else "training_set") / c / name, source[c][0].parent / name)
    cs, run = fit(no_val, tmp_path)
    assert cs.class_names == list(CLASSES)
    assert {p for p, s in zip(cs.paths, cs.split) if s == TEST} == {
        f"test_set/{c}/{n}" for (c, n), s in split.items() if s == "test"}
    assert_labels(cs, lambda p: tuple(p.split("/")[1:]))
    assert set(run.record["test_paths"]) == {f"test_set/{c}/{n}" for (c, n), s in split.items() if s == "test"}
    results["split folders, validation drawn"] = run.metrics["accuracy"]

    # a labels CSV with a split column, naming the images three ways; photos spread over two folders
    for form in ("path", "bare name", "id"):
        data = tmp_path / f"csv_{form.replace(' ', '_')}"
        rows = []
        for i, ((c, name), s) in enumerate(sorted(split.items())):
            unique = f"{c}-{name}"
            rel = f"photos/{'ab'[i % 2]}/{unique}"
            link(data / rel, source[c][0].parent / name)
            value = {"path": rel, "bare name": unique, "id": unique[:-4]}[form]
            rows.append((value, c, s))
        with open(data / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "label", "split"])
            w.writerows(rows)
        cs, run = fit(data, tmp_path)
        assert cs.attrs["layout"].count("labels-file") == 1 and cs.class_names == list(CLASSES)
        got = {(p.rsplit("/", 1)[-1].split("-", 1)[0], p.rsplit("/", 1)[-1].split("-", 1)[1]): SPLIT_NAMES[s]
               for p, s in zip(cs.paths, cs.split)}
        assert got == split
        results[f"labels file ({form})"] = run.metrics["accuracy"]
        assert predictions(run, lambda p: tuple(p.rsplit("/", 1)[-1].split("-", 1))) == predicted
        assert_labels(cs, lambda p: tuple(p.rsplit("/", 1)[-1].split("-", 1)))

    # labels in file names, split drawn: each image's part follows from its own path (other paths
    # than the class folders' above, so another draw: the one the path rule gives)
    names = tmp_path / "names"
    for c, files in source.items():
        for f in files:
            link(names / f"{c}_{f.name}", f)
    cs, run = fit(names, tmp_path, label_pattern=r"^(.+?)_image_\d+\.jpg$")
    assert cs.class_names == list(CLASSES)
    drawn = stratified_split(list(cs.paths), cs.y, (0.7, 0.15, 0.15), seed=0)
    assert np.array_equal(np.asarray(cs.split), drawn)
    results["labels in file names"] = run.metrics["accuracy"]
    assert_labels(cs, lambda p: (p.split("_image_")[0],))

    print("test accuracy per layout:", results)
    same_split = {k: v for k, v in results.items() if k not in ("split folders, validation drawn",
                                                                 "labels in file names")}
    assert len(set(round(v, 9) for v in same_split.values())) == 1, results
    assert results["split folders, validation drawn"] >= 0.4
