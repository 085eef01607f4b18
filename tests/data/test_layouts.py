"""The layouts a data folder can have (docs/data.md): each detected and read the way it is, every
ambiguous or broken one refused in one line. Reading a layout needs no backbone: these are fast."""
import csv

import numpy as np
import pytest
from PIL import Image

from pipeline.data import (
    SPLIT_WORDS,
    TEST,
    TRAIN,
    UNLABELLED,
    VAL,
    LayoutOptions,
    assign_split,
    read_folder,
    split_scores,
)
from pipeline.errors import ParameterError, UserError


def image(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def class_tree(root, classes=("cat", "dog"), per_class=4, prefix=""):
    for c in classes:
        for i in range(per_class):
            image(root / c / f"{prefix}{c}{i}.jpg")
    return root


def write_table(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def flat_images(root, names):
    for n in names:
        image(root / n)
    return root


# ------------------------------------------------------------------ class folders

def test_class_folders(tmp_path):
    ds = read_folder(class_tree(tmp_path / "d"))
    assert ds.source["layout"] == "folders" and ds.class_names == ["cat", "dog"]
    assert ds.description.startswith("class folders") and ds.split is None
    assert np.array_equal(ds.counts(), [4, 4])


# ------------------------------------------------------------------ split folders

@pytest.mark.parametrize("train,val,test", [
    (t, v, s) for t, v, s in zip(SPLIT_WORDS[TRAIN], SPLIT_WORDS[VAL] + SPLIT_WORDS[VAL], SPLIT_WORDS[TEST] * 2)])
def test_split_folders_every_synonym(tmp_path, train, val, test):
    root = tmp_path / "d"
    class_tree(root / train.upper() if train == "train" else root / train, per_class=6)
    class_tree(root / val, per_class=2, prefix="v")
    class_tree(root / test, per_class=3, prefix="t")
    ds = read_folder(root)
    assert ds.source["layout"] == "split-folders" and ds.class_names == ["cat", "dog"]
    split = assign_split(ds, (0.5, 0.25, 0.25), seed=0)
    by_top = {}
    for p, s in zip(ds.paths, split):
        by_top.setdefault(p.split("/")[0].lower(), set()).add(int(s))
    assert by_top == {train: {TRAIN}, val: {VAL}, test: {TEST}}  # the folders decide, nothing drawn
    assert ds.description.startswith("split folders ") and f"{test}/" in ds.description


def test_split_folders_without_validation_draw_it_from_train_only(tmp_path):
    root = tmp_path / "d"
    class_tree(root / "training_set", per_class=20)
    class_tree(root / "test_set", per_class=5, prefix="t")
    ds = read_folder(root)
    assert "validation drawn from training_set/" in ds.description
    split = assign_split(ds, (0.7, 0.15, 0.15), seed=0)
    tops = np.array([p.split("/")[0] for p in ds.paths])
    assert set(split[tops == "test_set"]) == {TEST}  # the test folder stays untouched
    train_part = split[tops == "training_set"]
    assert set(train_part) == {TRAIN, VAL}
    # --split gives only the validation share: 15 / (70 + 15) of the training images, by their paths
    scores = split_scores([p for p, t in zip(ds.paths, tops) if t == "training_set"], seed=0)
    assert np.array_equal(train_part == VAL, scores < 0.15 / 0.85) and 0 < (train_part == VAL).sum() < 40
    # another seed draws another validation part, never touching the test folder
    other = assign_split(ds, (0.7, 0.15, 0.15), seed=1)
    assert not np.array_equal(other, split) and set(other[tops == "test_set"]) == {TEST}


def test_split_folders_notes_and_errors(tmp_path):
    root = tmp_path / "d"
    class_tree(root / "train", ("cat", "dog", "owl"))
    class_tree(root / "test", ("cat", "dog"), prefix="t")
    ds = read_folder(root)
    assert any("no test images in test/: owl" in n for n in ds.notes)

    class_tree(root / "test", ("bat",), prefix="t")  # a class only outside the training folder
    with pytest.raises(UserError, match="bat of test/ have no images in train/"):
        read_folder(root)

    mixed = tmp_path / "mixed"
    class_tree(mixed / "train")
    class_tree(mixed, ("cats",))
    with pytest.raises(UserError, match=r"mixes split folders \(train/\) and class folders \(cats/\)"):
        read_folder(mixed)

    two = tmp_path / "two"
    class_tree(two / "train")
    class_tree(two / "training")
    with pytest.raises(UserError, match="2 training folders"):
        read_folder(two)

    loose = tmp_path / "loose"
    flat_images(loose / "train", ["a.jpg", "b.jpg"])
    flat_images(loose / "test", ["c.jpg"])
    with pytest.raises(UserError, match="holds images directly"):
        read_folder(loose)

    # forced class folders read "train" as a class, as the user asked
    ds = read_folder(mixed, LayoutOptions(layout="folders"))
    assert ds.class_names == ["cats", "train"]


# ------------------------------------------------------------------ labels files

def kaggle(root, n=12):
    """train/ and test/ of flat images, a CSV of id,breed for the training images."""
    names = [f"img{i:02d}" for i in range(n)]
    flat_images(root / "train", [f"{x}.jpg" for x in names])
    flat_images(root / "test", [f"t{i}.jpg" for i in range(3)])
    return names


@pytest.mark.parametrize("form", ["path", "bare", "id", "absolute"])
def test_labels_file_image_names(tmp_path, form):
    root = tmp_path / "d"
    names = kaggle(root)
    value = {"path": lambda x: f"train/{x}.jpg", "bare": lambda x: f"{x}.jpg", "id": lambda x: x,
             "absolute": lambda x: str((root / "train" / f"{x}.jpg").resolve())}[form]
    write_table(root / "labels.csv", ["id", "breed"], [(value(x), "beagle" if i % 2 else "pug")
                                                       for i, x in enumerate(names)])
    ds = read_folder(root)  # found without --labels: the one table naming the images
    assert ds.source["layout"] == "labels-file" and ds.class_names == ["beagle", "pug"]
    assert ds.description.startswith("labels file labels.csv (image column 'id', label column 'breed'")
    label = dict(zip(ds.paths, ds.labels))
    assert label["train/img01.jpg"] == 0 and label["train/img02.jpg"] == 1
    # the test folder's images are not listed: unlabelled, kept, never trained or tested on
    assert [label[f"test/t{i}.jpg"] for i in range(3)] == [-1] * 3
    split = assign_split(ds, (0.5, 0.25, 0.25), seed=0)
    assert set(split[ds.labels < 0]) == {UNLABELLED} and set(split[ds.labels >= 0]) == {TRAIN, VAL, TEST}
    assert any("test/, train/" in n and "just folders" in n for n in ds.notes)


def test_labels_file_tsv_semicolons_columns_and_split_column(tmp_path):
    root = tmp_path / "d"
    names = kaggle(root)
    words = ["training", "valid", "TEST"]
    write_table(root / "meta.tsv", ["File_Name", "Category", "Fold"],
                [(f"{x}.jpg", "a" if i % 2 else "b", words[i % 3]) for i, x in enumerate(names)], delimiter="\t")
    ds = read_folder(root)
    assert ds.source["split_column"] == "Fold"
    split = assign_split(ds, (0.7, 0.15, 0.15), seed=0)
    got = dict(zip(ds.paths, split))
    assert [got[f"train/{x}.jpg"] for x in names[:3]] == [TRAIN, VAL, TEST]

    semi = tmp_path / "semi"
    names = kaggle(semi)
    write_table(semi / "labels.csv", ["picture", "kind"], [(f"{x}.jpg", "a" if i % 2 else "b")
                                                           for i, x in enumerate(names)], delimiter=";")
    with pytest.raises(UserError, match="labels.csv was not read as a labels file: no column names the images"):
        read_folder(semi)  # unknown column names: not taken for a labels file unasked, and said why
    with pytest.raises(UserError, match="no column names the images.*--image-column"):
        read_folder(semi, LayoutOptions(labels=str(semi / "labels.csv")))
    ds = read_folder(semi, LayoutOptions(labels=str(semi / "labels.csv"), image_column="picture", label_column="kind"))
    assert ds.class_names == ["a", "b"] and (ds.labels >= 0).sum() == len(names)


def test_labels_file_counts_missing_and_absent_labels(tmp_path):
    root = tmp_path / "d"
    names = kaggle(root)
    rows = [(x, "pug" if i % 2 else "beagle") for i, x in enumerate(names)] + [("gone1", "pug"), ("gone2", "corgi")]
    write_table(root / "labels.csv", ["image_id", "label"], rows)
    ds = read_folder(root)
    assert ds.missing == ("gone1", "gone2")  # counted and listed like unreadable images
    assert ds.class_names == ["beagle", "pug"]  # corgi has no image here: not a class
    assert any("1 label(s)" in n and "corgi" in n for n in ds.notes)


def test_split_named_folders_beside_a_labels_file_are_just_folders(tmp_path):
    root = tmp_path / "d"
    class_tree(root / "train", ("x", "y"))  # folders that look like split folders ...
    class_tree(root / "test", ("x", "y"), prefix="t")
    rows = [(p.relative_to(root).as_posix(), "odd" if i % 2 else "even")
            for i, p in enumerate(sorted(root.rglob("*.jpg")))]
    write_table(root / "labels.csv", ["path", "class"], rows)
    ds = read_folder(root)  # ... but the labels file decides, and the split is drawn
    assert ds.source["layout"] == "labels-file" and ds.class_names == ["even", "odd"]
    split = assign_split(ds, (0.5, 0.25, 0.25), seed=0)
    tops = np.array([p.split("/")[0] for p in ds.paths])
    assert set(split[tops == "train"]) == {TRAIN, VAL, TEST}


@pytest.mark.parametrize("case,message", [
    ("empty", "is empty"),
    ("header only", "has a header and no rows"),
    ("no images", "names none of the images"),
    ("latin-1", "is not UTF-8 text"),
    ("empty label", "line 3: the label cell \\(label\\) of img01.jpg is empty"),
    ("two labels", "gives img01.jpg two labels: 'a' \\(line 3\\) and 'b' \\(line 4\\)"),
    ("two files", "matches 2 files: a/same.jpg and b/same.jpg"),
    ("one class", "1 class"),
    ("bad split", "split 'later' of img00.jpg is not one of train, val, test"),
    ("unknown column", "no column 'nope' \\(--label-column\\)"),
])
def test_labels_file_errors(tmp_path, case, message):
    root = tmp_path / "d"
    flat_images(root, [f"img{i:02d}.jpg" for i in range(4)] + ["a/same.jpg", "b/same.jpg"])
    labels = root / "labels.csv"
    options = LayoutOptions(labels=str(labels))
    rows = [("img00.jpg", "a"), ("img01.jpg", "b"), ("img02.jpg", "a")]
    if case == "empty":
        labels.write_text("")
    elif case == "header only":
        write_table(labels, ["image", "label"], [])
    elif case == "no images":
        write_table(labels, ["image", "label"], [("x.jpg", "a"), ("y.jpg", "b")])
    elif case == "latin-1":
        labels.write_bytes("image,label\nimg00.jpg,caf\xe9\nimg01.jpg,b\n".encode("latin-1"))
    elif case == "empty label":
        write_table(labels, ["image", "label"], [("img00.jpg", "a"), ("img01.jpg", "")])
    elif case == "two labels":
        write_table(labels, ["image", "label"], [("img00.jpg", "b"), ("img01.jpg", "a"), ("img01.jpg", "b")])
    elif case == "two files":
        write_table(labels, ["image", "label"], rows + [("same.jpg", "a")])
    elif case == "one class":
        write_table(labels, ["image", "label"], [(r[0], "a") for r in rows])
    elif case == "bad split":
        write_table(labels, ["image", "label", "split"], [(r[0], r[1], "later") for r in rows])
    elif case == "unknown column":
        write_table(labels, ["image", "label"], rows)
        options = LayoutOptions(labels=str(labels), label_column="nope")
    with pytest.raises(UserError, match=message):
        read_folder(root, options)


def test_two_tables_naming_the_images_are_ambiguous(tmp_path):
    root = tmp_path / "d"
    flat_images(root, ["a.jpg", "b.jpg"])
    for name in ("one.csv", "two.csv"):
        write_table(root / name, ["image", "label"], [("a.jpg", "x"), ("b.jpg", "y")])
    with pytest.raises(UserError, match=r"2 table files that name its images \(one.csv, two.csv\).*--labels"):
        read_folder(root)
    assert read_folder(root, LayoutOptions(labels=str(root / "two.csv"))).class_names == ["x", "y"]


def test_multi_label_tables(tmp_path):
    root = tmp_path / "d"
    flat_images(root, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    expected = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])  # cat, dog, owl
    write_table(root / "labels.csv", ["image", "tags"],
                [("a.jpg", "cat|dog"), ("b.jpg", "dog"), ("c.jpg", "owl"), ("d.jpg", "owl; cat")])
    ds = read_folder(root)
    assert ds.multi_label and ds.class_names == ["cat", "dog", "owl"]
    assert np.array_equal(ds.targets, expected) and "multi-label" in ds.description

    write_table(root / "labels.csv", ["image", "cat", "dog", "owl"],
                [(n, *row) for n, row in zip(["a.jpg", "b.jpg", "c.jpg", "d.jpg"], expected)])
    ds = read_folder(root)  # one 0/1 column per label
    assert ds.multi_label and np.array_equal(ds.targets, expected)

    write_table(root / "labels.csv", ["image", "label"],
                [("a.jpg", "cat"), ("a.jpg", "dog"), ("b.jpg", "dog"), ("c.jpg", "owl"), ("d.jpg", "cat"),
                 ("d.jpg", "owl")])
    with pytest.raises(UserError, match="two labels"):  # several rows: only when asked
        read_folder(root)
    ds = read_folder(root, LayoutOptions(task="multi-label"))
    assert np.array_equal(ds.targets, expected)
    with pytest.raises(ParameterError, match="multi-label needs a labels file"):
        read_folder(class_tree(tmp_path / "cf"), LayoutOptions(task="multi-label"))


# ------------------------------------------------------------------ labels in file names, unlabelled

def test_labels_in_file_names(tmp_path):
    root = flat_images(tmp_path / "d", ["great_pyrenees_1.jpg", "great_pyrenees_2.jpg", "pug_1.jpg", "pug_7.png",
                                        "sub/pug_3.jpg", "readme.jpg"])
    ds = read_folder(root, LayoutOptions(label_pattern=r"^(.+)_\d+\.\w+$"))
    assert ds.source["layout"] == "names" and ds.class_names == ["great_pyrenees", "pug"]
    label = dict(zip(ds.paths, ds.labels))
    assert label["sub/pug_3.jpg"] == 1 and label["readme.jpg"] == -1  # no match: unlabelled
    assert "1 file(s) do not match" in ds.description
    with pytest.raises(UserError, match="matches none of the 6 file names"):
        read_folder(root, LayoutOptions(label_pattern=r"^(\d+)\.png$"))
    with pytest.raises(ParameterError, match="not a regular expression"):
        read_folder(root, LayoutOptions(label_pattern="^(.+"))
    with pytest.raises(ParameterError, match="has no group"):
        read_folder(root, LayoutOptions(label_pattern=r"^\w+$"))


def test_unlabelled_folder(tmp_path):
    root = flat_images(tmp_path / "d", ["a.jpg", "c.png"])
    with pytest.raises(UserError, match="no class folders and no labels file.*--layout unlabelled"):
        read_folder(root)
    flat_images(root, ["b/d.png"])
    ds = read_folder(root, LayoutOptions(layout="unlabelled"))
    assert ds.paths == ["a.jpg", "b/d.png", "c.png"] and list(ds.labels) == [-1] * 3 and ds.class_names == []
    assert set(assign_split(ds)) == {UNLABELLED}


def test_images_beside_class_folders_are_unlabelled(tmp_path):
    root = class_tree(tmp_path / "d")
    flat_images(root, ["stray.jpg"])
    ds = read_folder(root)
    assert ds.source["layout"] == "folders" and dict(zip(ds.paths, ds.labels))["stray.jpg"] == -1
    assert "1 image(s) at the top of d/ are in no class folder" in ds.notes[0]
    assert assign_split(ds)[ds.paths.index("stray.jpg")] == UNLABELLED


def test_layout_options_are_checked():
    with pytest.raises(ParameterError, match="layout"):
        LayoutOptions(layout="tree").check()
    with pytest.raises(ParameterError, match="labels"):
        LayoutOptions(layout="names", labels="x.csv").check()


def test_class_names_with_line_breaks_are_refused(tmp_path):
    root = class_tree(tmp_path / "d", ("cat", "dog\nowl"))
    with pytest.raises(UserError, match=r"class name 'dog\\nowl' holds a line break"):
        read_folder(root)
    flat_images(tmp_path / "f", ["a.jpg", "b.jpg"])
    labels = tmp_path / "f" / "labels.csv"
    labels.write_text('image,label\na.jpg,"x\r\ny"\nb.jpg,z\n')  # a quoted cell may hold a line break
    with pytest.raises(UserError, match="holds a line break"):
        read_folder(tmp_path / "f")


def test_special_files_are_never_opened_and_every_skipped_kind_is_counted(tmp_path):
    import os

    root = class_tree(tmp_path / "d")
    os.mkfifo(root / "cat" / "pipe.jpg")  # reading it would wait forever
    (root / "dog" / "notes.txt").write_text("x")
    (root / "dog" / ".DS_Store").write_text("x")
    image(root / "dog" / "scan.TIF")
    (root / "dog" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    ds = read_folder(root)
    assert "cat/pipe.jpg" not in ds.paths and "dog/scan.TIF" in ds.paths
    assert "dog/gone.jpg" in ds.paths  # a link to nothing: listed as unreadable, tried again once it leads somewhere
    assert ds.skipped == {"special file": 1, ".txt": 1, "hidden": 1}
