"""A name is one name: whatever the labelling app writes to a labels file, stage 1 reads back as
the same labels (single-label names holding , | or ; stay one class; multi-label sets keep their
label sets), for random names (Hypothesis)."""
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data import LabelsTable, LayoutOptions, check_class_name, read_folder
from pipeline.errors import UserError

N_IMAGES = 6


def _ok(name: str, multi: bool) -> bool:
    try:
        return check_class_name(name, multi) == name
    except UserError:
        return False


def names(multi: bool):
    letters = st.characters(blacklist_categories=("Cs",))  # every character a str can hold but surrogates
    favoured = st.sampled_from(list(",|;\\\"' =+-@\t") + list(string.ascii_letters))
    return st.text(st.one_of(favoured, letters), min_size=1, max_size=24).filter(lambda n: _ok(n, multi))


def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    for i in range(N_IMAGES):
        (root / f"img{i}.jpg").write_bytes(b"not decoded")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return folder(tmp_path_factory)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names(False), min_size=2, max_size=N_IMAGES, unique=True))
def test_single_label_names_read_back_as_one_class_each(root, classes):
    path = root / "labels.csv"
    path.unlink(missing_ok=True)
    table = LabelsTable(path, root)
    want = {f"img{i}.jpg": classes[i % len(classes)] for i in range(N_IMAGES)}
    for image, name in want.items():
        table.set(image, [name])
    table.write()
    ds = read_folder(root, LayoutOptions(labels=str(path)))
    assert not ds.multi_label
    got = {p: ds.class_names[y] for p, y in zip(ds.paths, ds.labels)}
    assert got == want and sorted(ds.class_names) == sorted(classes)
    assert LabelsTable(path, root).labels() == {k: [v] for k, v in want.items()}  # the app reads it back too


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(names(True), min_size=2, max_size=5, unique=True), st.data())
def test_multi_label_sets_read_back_as_the_same_sets(root, labels, data):
    path = root / "tags.csv"
    path.unlink(missing_ok=True)
    table = LabelsTable(path, root, multi=True)
    want = {}
    for i in range(N_IMAGES):
        chosen = data.draw(st.lists(st.sampled_from(labels), min_size=1, max_size=3, unique=True))
        want[f"img{i}.jpg"] = sorted(chosen)
        table.set(f"img{i}.jpg", chosen)
    want["img0.jpg"] = sorted(labels[:2])  # (at least one image with two labels: the file reads as multi-label)
    table.set("img0.jpg", labels[:2])
    table.write()
    ds = read_folder(root, LayoutOptions(labels=str(path)))
    assert ds.multi_label
    got = {p: sorted(ds.class_names[j] for j in range(len(ds.class_names)) if row[j]) for p, row in zip(ds.paths, ds.targets)}
    assert got == want


def test_a_class_named_with_a_comma_stays_one_class(tmp_path):
    for i in range(4):
        (tmp_path / f"img{i}.jpg").write_bytes(b"x")
    table = LabelsTable(tmp_path / "labels.csv", tmp_path)
    for i, name in enumerate(["hot dog, chili", "taco", "hot dog, chili", "taco"]):
        table.set(f"img{i}.jpg", [name])
    table.write()
    ds = read_folder(tmp_path)
    assert not ds.multi_label and ds.class_names == ["hot dog, chili", "taco"]


def test_names_with_line_or_paragraph_separators_are_refused():
    for name in ("a\u2028b", "a\u0085b", "a\u2029b", "a\x1fb", "a\nb"):
        with pytest.raises(UserError, match="one line"):
            check_class_name(name)


def test_a_labels_file_of_a_long_name_has_its_excluded_list_and_journal(tmp_path):
    from pipeline.data import Journal, excluded_file, journal_file

    for i in range(2):
        (tmp_path / f"img{i}.jpg").write_bytes(b"x")
    path = tmp_path / ("l" * 246 + ".csv")  # 250 bytes: <stem>.excluded.txt would be 259
    table = LabelsTable(path, tmp_path)
    table.set("img0.jpg", ["a"])
    table.set("img1.jpg", [], excluded=True)
    table.write()
    Journal(path).append({"image": "img0.jpg", "after": ["a"]})
    assert len(excluded_file(path).name.encode()) <= 255 and excluded_file(path).read_text() == "img1.jpg\n"
    assert len(journal_file(path).name.encode()) <= 255 and journal_file(path).is_file()
    assert excluded_file(path) != journal_file(path) and LabelsTable(path, tmp_path).excluded == {"img1.jpg"}


def test_an_excluded_image_of_any_name_stays_excluded(tmp_path):
    from pipeline.data import excluded_images

    names = ["plain.jpg", "two\nlines.jpg", '"quoted".jpg', "sep\u2028line.jpg", " spaced.jpg"]
    path = tmp_path / "labels.csv"
    table = LabelsTable(path, tmp_path)
    for n in names:
        table.set(n, [], excluded=True)
    table.write()
    assert excluded_images(path) == set(names) and len(excluded_file_lines(path)) == len(names)


def excluded_file_lines(path):
    from pipeline.data import excluded_file

    return excluded_file(path).read_bytes().split(b"\n")[:-1]
