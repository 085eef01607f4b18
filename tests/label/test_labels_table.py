"""The labels file as the labelling app edits it: kept in the form it was found in, read back by
stage 1's reader with exactly the decisions made, written whole."""
import os
import subprocess
import sys

import pytest
from helpers import make_images

from pipeline.data import UNLABELLED, LayoutOptions, read_folder
from pipeline.data import LabelsTable, check_class_name, excluded_file
from pipeline.errors import UserError


@pytest.fixture
def flat(tmp_path):
    """Twelve images in one folder, no labels yet."""
    src = make_images(tmp_path / "src", n_classes=2, per_class=6)
    root = tmp_path / "data"
    root.mkdir()
    for p in sorted(src.rglob("*.*")):
        os.link(p, root / "_".join(p.relative_to(src).parts))
    return root


def read_back(root, labels_file, **kw):
    ds = read_folder(root, LayoutOptions(labels=str(labels_file), **kw))
    if ds.multi_label:
        return {p: sorted(ds.class_names[j] for j in range(len(ds.class_names)) if ds.targets[i, j])
                for i, p in enumerate(ds.paths) if ds.targets[i].any()}
    return {p: ds.class_names[ds.labels[i]] for i, p in enumerate(ds.paths) if ds.labels[i] >= 0}


def test_a_new_file_holds_the_seed_and_each_decision_and_stage_1_reads_them(flat):
    images = sorted(p.name for p in flat.iterdir())
    path = flat / "labels.csv"
    t = LabelsTable(path, flat, seed={images[0]: ["cat"]})
    assert not path.exists()  # nothing written before a decision
    t.set(images[1], ["dog"])
    t.set(images[2], ["cat"])
    t.write()
    assert path.read_text().splitlines()[0] == "path,label"
    assert read_back(flat, path) == {images[0]: "cat", images[1]: "dog", images[2]: "cat"}
    t.set(images[2], ["dog"])   # relabelled
    t.set(images[1], None)      # label taken back
    t.set(images[3], [], excluded=True)
    t.write()
    assert read_back(flat, path) == {images[0]: "cat", images[2]: "dog"}
    assert excluded_file(path).read_text() == f"{images[3]}\n"
    again = LabelsTable(path, flat)
    assert again.labels() == {images[0]: ["cat"], images[2]: ["dog"]} and again.excluded == {images[3]}


def test_a_users_table_keeps_its_form_names_and_splits(flat):
    images = sorted(p.name for p in flat.iterdir())
    path = flat / "annotations.tsv"
    stem = images[0].rsplit(".", 1)[0]  # named by an id, without extension
    path.write_text(f"id\tnotes\tclass\tfold\n{stem}\tfirst\tcat\ttest\n{images[1]}\tx\tdog\ttrain\n")
    t = LabelsTable(path, flat, LayoutOptions(labels=str(path)))
    t.set(images[0], ["dog"])
    for name in images[2:8]:
        t.set(name, ["cat"])
    t.write()
    lines = path.read_text().splitlines()
    assert lines[0] == "id\tnotes\tclass\tfold"
    assert lines[1] == f"{stem}\tfirst\tdog\ttest"  # its name, its note and its split kept
    new_splits = [ln.split("\t")[3] for ln in lines[3:]]
    assert set(new_splits) <= {"train", "val", "test"} and len(new_splits) == 6
    ds = read_folder(flat, LayoutOptions(labels=str(path)))
    assert read_back(flat, path) == {images[0]: "dog", images[1]: "dog", **{n: "cat" for n in images[2:8]}}
    assert (ds.split != UNLABELLED).sum() == 8  # every row's split is a split stage 1 reads
    t2 = LabelsTable(path, flat, LayoutOptions(labels=str(path)))  # the same split for the same image every time
    t2.set(images[2], None)
    t2.set(images[2], ["dog"])
    t2.write()
    assert path.read_text().splitlines()[-1].split("\t")[3] == new_splits[0]


def test_multi_label_cells_and_one_hot_tables(flat):
    images = sorted(p.name for p in flat.iterdir())
    path = flat / "tags.csv"
    path.write_text(f"image,tags\n{images[0]},sky;sea\n{images[1]},sea\n")
    t = LabelsTable(path, flat, LayoutOptions(labels=str(path)))
    assert t.multi and t.separator == ";"
    t.set(images[1], ["sea", "boat"])
    t.write()
    assert read_back(flat, path) == {images[0]: ["sea", "sky"], images[1]: ["boat", "sea"]}
    with pytest.raises(UserError, match="cannot hold"):
        t.set(images[2], ["a;b"])

    hot = flat / "hot.csv"
    hot.write_text(f"file,sky,sea\n{images[0]},1,0\n{images[1]},0,1\n")
    t = LabelsTable(hot, flat, LayoutOptions(labels=str(hot)))
    t.set(images[2], ["sky", "boat"])  # a label the table has no column for: one more column
    t.write()
    assert hot.read_text().splitlines()[0] == "file,sky,sea,boat"
    assert read_back(flat, hot) == {images[0]: ["sky"], images[1]: ["sea"], images[2]: ["boat", "sky"]}


def test_class_names_that_would_break_the_file_are_refused():
    assert check_class_name("  cat ") == "cat"
    for bad in ("", "   ", "a\nb", "x" * 201, None):
        with pytest.raises(UserError):
            check_class_name(bad)


def test_a_kill_while_writing_leaves_the_file_as_it_was(flat):
    """The fault point between the temporary file and the rename: the file holds the decisions
    written before, whole."""
    images = sorted(p.name for p in flat.iterdir())
    path = flat / "labels.csv"
    t = LabelsTable(path, flat)
    t.set(images[0], ["cat"])
    t.set(images[1], ["dog"])
    t.write()
    before = path.read_bytes()
    code = ("import sys; from pipeline.data import LabelsTable; "
            "t = LabelsTable(sys.argv[1], sys.argv[2]); t.set(sys.argv[3], ['dog']); t.write()")
    env = dict(os.environ, CNN_CODES_FAULT="labels-tmp-written")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(flat), images[2]], env=env)
    assert done.returncode == -9
    assert path.read_bytes() == before
    assert read_back(flat, path) == {images[0]: "cat", images[1]: "dog"}
    done = subprocess.run([sys.executable, "-c", code, str(path), str(flat), images[2]])
    assert done.returncode == 0 and read_back(flat, path)[images[2]] == "dog"
