"""Hostile inputs, round three (the causes mended so far): Unicode line breaks in class names, a
name pattern that backtracks without end, a multi-label set with a label on every image, formula
cells in suggest's CSV, and output names at the file system's 255-byte limit. Each ends in exit 0
with a right result, or exit 2 with one ``error:`` line, quickly, with no traceback."""
import csv
import shutil
import time

import h5py
import numpy as np
import pytest
from helpers import make_images, user_error_lines, write_code_file

from pipeline.cli.main import main, run_cli

FAST = ["--weights", "none", "--image-size", "32", "--no-progress"]


def run(args, capsys):
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err, time.perf_counter() - t0


# every character str.splitlines (and so a reader of labels.txt) breaks a line at, and DEL
BREAKS = ["a\u2028b", "a\u0085b", "a\u2029b", "a\x0bb", "a\x0cb", "a\x1cb", "a\x1db", "a\x1eb", "a\x7fb"]


@pytest.mark.parametrize("name", BREAKS)
def test_a_class_name_with_a_unicode_line_break_is_one_error_line(tmp_path, capsys, name):
    make_images(tmp_path / "d", n_classes=2, per_class=3)
    (tmp_path / "d" / "class1").rename(tmp_path / "d" / name)
    code, _, err, _ = run(["codes", "--data", tmp_path / "d", "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and "line break" in err, err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.h5"))


@pytest.mark.timeout(120)  # (without its fix this test never ends)
def test_a_pattern_that_backtracks_without_end_is_stopped(tmp_path, capsys):
    data = tmp_path / "d"
    src = make_images(tmp_path / "src", n_classes=1, per_class=2)
    data.mkdir()
    for i, p in enumerate(sorted(src.rglob("*.*"))):
        shutil.copy(p, data / ("a" * 40 + f"{i}.png"))
    for pattern in ("^(a|aa)+$", "^((a+)+)$"):
        code, _, err, seconds = run(["codes", "--data", data, "--cache-dir", tmp_path / "cache", "--label-pattern",
                                     pattern, *FAST], capsys)
        assert code == 2 and user_error_lines(err) == err.strip().splitlines() and seconds < 60, (pattern, err)
        assert "--label-pattern" in err


def test_audit_of_a_multi_label_set_with_a_label_on_every_image(tmp_path, capsys):
    rng = np.random.default_rng(0)
    Y = (rng.random((80, 3)) < 0.4).astype(np.uint8)
    Y[:, 0] = 1  # every image has label a
    X = Y @ rng.normal(0, 2, (3, 8)) + rng.normal(0, 1, (80, 8))
    split = np.where(np.arange(80) % 4 == 0, 2, 0).astype(np.int8)
    path = write_code_file(tmp_path / "m.h5", X, Y, split, [f"x/{i}.jpg" for i in range(80)], ["a", "b", "c"],
                           backbone="fake", layer="top", pooling="avg", image_size=32, task="multi-label")
    with h5py.File(path, "r+") as f:
        f.move("labels", "targets")
    code, out, err, _ = run(["audit", "--codes", path, "--runs-dir", tmp_path / "runs"], capsys)
    assert code == 0, err
    assert "Traceback" not in err and "not searched for label errors" in out + err


def test_suggest_neutralises_formula_cells_and_takes_an_out_name_of_255_bytes(tmp_path, capsys):
    src = make_images(tmp_path / "src", n_classes=2, per_class=6)
    data = tmp_path / "d"
    data.mkdir()
    rows = []
    for i, p in enumerate(sorted(src.rglob("*.*"))):
        name = f"=2+{i}{p.suffix}" if i % 2 else f"img{i}{p.suffix}"
        shutil.copy(p, data / name)
        if i % 3 == 0:
            rows.append(f"{name},{p.relative_to(src).parts[0]}\n")
    (data / "labels.csv").write_text("path,label\n" + "".join(rows))
    out = tmp_path / ("n" * 251 + ".csv")  # 255 bytes: its temporary name must fit too
    code, _, err, _ = run(["suggest", "--data", data, "--cache-dir", tmp_path / "cache", *FAST, "--n", "6",
                           "--out", out], capsys)
    assert code == 0, err
    cells = [r[0] for r in list(csv.reader(out.open()))[1:]]
    assert cells and all(not c.startswith("=") for c in cells)
    assert any(c.startswith("'=2+") for c in cells)  # neutralised as the other CSVs are, read back by from_cell
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("where", ["split folder", "class folder in a split folder"])
def test_a_linked_folder_the_walk_would_skip_is_refused_in_one_line_naming_it(tmp_path, capsys, where):
    data = tmp_path / "d"
    make_images(data / "train", n_classes=2, per_class=4)
    make_images(tmp_path / "elsewhere", n_classes=2, per_class=3)
    if where == "split folder":
        link = data / "test"
        link.symlink_to(tmp_path / "elsewhere")  # test -> outside the data folder
    else:
        (data / "test").mkdir()
        (data / "test" / "class0").symlink_to(tmp_path / "elsewhere" / "class0")
        link = data / "test" / "class0"
    code, _, err, _ = run(["codes", "--data", data, "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and str(link) in err, err
    assert "link to a folder" in err


def test_linked_class_folders_and_a_linked_data_folder_are_read(tmp_path, capsys):
    make_images(tmp_path / "real", n_classes=2, per_class=4)
    data = tmp_path / "d"
    data.mkdir()
    for c in ("class0", "class1"):  # class folders linked one by one (a subset of a larger set)
        (data / c).symlink_to(tmp_path / "real" / c)
    (tmp_path / "linked-root").symlink_to(data)
    code, out, err, _ = run(["codes", "--data", tmp_path / "linked-root", "--cache-dir", tmp_path / "cache", *FAST],
                            capsys)
    assert code == 0 and "8 images" in out + err, err


def test_a_crafted_labels_file_is_read_quickly(tmp_path, capsys):
    make_images(tmp_path / "d", n_classes=2, per_class=3)
    (tmp_path / "d" / "labels.csv").write_text("path,label\n" + '"' + ',"' * 32000 + "\n")  # 64 KB of quotes
    t0 = time.perf_counter()
    code, _, err, _ = run(["codes", "--data", tmp_path / "d", "--cache-dir", tmp_path / "cache", "--labels",
                           tmp_path / "d" / "labels.csv", *FAST], capsys)
    assert time.perf_counter() - t0 < 5 and code == 2 and user_error_lines(err) == err.strip().splitlines(), err


def test_a_class_folder_named_in_latin_1_is_one_error_line(tmp_path, capsys):
    import os

    make_images(tmp_path / "d", n_classes=2, per_class=3)
    os.rename(os.fsencode(tmp_path / "d" / "class1"), os.fsencode(tmp_path / "d") + b"/caf\xe9")
    code, _, err, _ = run(["codes", "--data", tmp_path / "d", "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and "UTF-8" in err, err
    assert "caf\\xe9" in err  # named as it is on disk


def test_a_data_folder_named_in_latin_1_is_one_error_line(tmp_path, capsys):
    import os

    make_images(tmp_path / "d", n_classes=2, per_class=3)
    latin = os.fsencode(tmp_path) + b"/dat\xe9"
    os.rename(os.fsencode(tmp_path / "d"), latin)
    code, _, err, _ = run(["codes", "--data", os.fsdecode(latin), "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and "dat\\xe9" in err, err


@pytest.mark.slow
def test_predict_writes_an_image_named_in_latin_1_as_its_own_bytes(tmp_path, capsys):
    import os

    make_images(tmp_path / "d", n_classes=2, per_class=5)
    first = sorted((tmp_path / "d" / "class1").iterdir())[0]
    os.rename(os.fsencode(first), os.fsencode(first.parent) + b"/ima\xe9" + os.fsencode(first.suffix))
    common = ["--data", tmp_path / "d", "--cache-dir", tmp_path / "cache", "--weights", "none", "--image-size", "32"]
    assert run(["codes", *common, "--no-progress"], capsys)[0] == 0
    code, _, err, _ = run(["train", *common, "--head", "prototype", "--runs-dir", tmp_path / "runs"], capsys)
    assert code == 0, err
    model = next((tmp_path / "runs").iterdir())
    code, out, err, _ = run(["predict", tmp_path / "d" / "class1", "--model", model, "--out", tmp_path / "p.csv"],
                            capsys)
    assert code == 0 and "Traceback" not in err, err
    assert b"ima\xe9" in (tmp_path / "p.csv").read_bytes()  # the path names the same file


def test_a_rare_label_without_a_test_image_is_said(tmp_path, capsys):
    src = make_images(tmp_path / "src", n_classes=2, per_class=10)
    data = tmp_path / "d"
    data.mkdir()
    rows = []
    for i, p in enumerate(sorted(src.rglob("*.*"))):
        shutil.copy(p, data / f"img{i:02d}{p.suffix}")
        tags = p.relative_to(src).parts[0] + ("|rare" if i == 0 else "|common")
        rows.append(f"img{i:02d}{p.suffix},{tags}\n")
    (data / "tags.csv").write_text("image,tags\n" + "".join(rows))
    code, out, err, _ = run(["codes", "--data", data, "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 0, err
    assert "1 label(s) have no test image (rare)" in out + err


def test_error_lines_name_the_users_files_not_our_temporary_ones():
    from pipeline.errors import os_error_text

    for temporary, theirs in (("/x/.data.3832.tmp", "/x/data"), ("/x/.labels.csv.123-ab12cd.tmp", "/x/labels.csv"),
                              ("c/d/top_activation-avg.4411-0a1b2c3d.tmp.h5", "c/d/top_activation-avg.h5"),
                              ("/x/labels.csv", "/x/labels.csv")):
        assert os_error_text(IsADirectoryError(21, "Is a directory", temporary)) == f"Is a directory: {theirs}"


def test_code_set_attributes_of_100000_characters_make_short_names_and_figures(tmp_path, capsys):
    """A code set handed over with a backbone and a layer of 100,000 characters: the run's name is
    cut within the file system's limit (with a digest: two such sets stay apart) and its figures
    show the texts cut (matplotlib laid out every character: 12 s a figure)."""
    from pipeline.reports import shown

    codes = tmp_path / "x.h5"
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 12)
    write_code_file(codes, rng.normal(size=(24, 8)) + y[:, None] * 3, y, np.tile([0, 0, 2], 8),
                    [f"c{c}/{i}.jpg" for i, c in enumerate(y)], ["c0", "c1"], backbone="fake", layer="top",
                    pooling="avg", image_size=32)
    with h5py.File(codes, "a") as f:
        f.attrs["backbone"], f.attrs["layer"] = "[" * 100_000, "a" * 100_000
    code, out, err, _ = run(["train", "--codes", codes, "--head", "prototype", "--runs-dir", tmp_path / "runs"], capsys)
    assert code == 0, err
    run_dir = next((tmp_path / "runs").iterdir())
    assert len(run_dir.name.encode()) <= 255 and "~" in run_dir.name  # cut, with a digest
    assert (run_dir / "confusion.png").stat().st_size > 1000 and (run_dir / "report.html").is_file()
    assert shown("a" * 100_000) == "a" * 99 + "\u2026" and shown("short title") == "short title"


@pytest.mark.parametrize("through", ["the link", "the real folder"])
def test_absolute_paths_in_a_labels_file_of_a_linked_data_folder_name_its_images(tmp_path, through):
    """DATA is a link to the real folder; a labels file names its images by absolute paths written
    through the link or through the real folder: either way each is found (they named none)."""
    from pipeline.data import LayoutOptions, read_folder

    real = make_images(tmp_path / "real", n_classes=2, per_class=3)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    base = tmp_path / ("link" if through == "the link" else "real")
    rows = [[str(base / f"class{c}" / name), f"k{c}"] for c in range(2)
            for name in sorted(p.name for p in (real / f"class{c}").iterdir())]
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "label"], *rows])
    ds = read_folder(tmp_path / "link", LayoutOptions(labels=str(tmp_path / "labels.csv")))
    assert sorted(ds.class_names) == ["k0", "k1"] and (ds.labels >= 0).sum() == len(rows) == 6
    assert all(not p.startswith("/") for p in ds.paths)  # relative to the data folder, as always


@pytest.mark.parametrize("command", ["audit", "train"])
def test_float64_codes_beyond_float32_are_one_line_without_numpys_warnings(tmp_path, capsys, command):
    """Codes of float64 are read as float32; beyond its range they are refused in one line (NumPy's
    overflow warning was printed beside it)."""
    import warnings

    from helpers import dataset_replaced

    codes = tmp_path / "x.h5"
    y = np.repeat([0, 1, 2], 20)
    X = np.random.default_rng(0).normal(size=(60, 8)) + y[:, None] * 2
    write_code_file(codes, X, y, np.tile([0, 0, 0, 2], 15), [f"c{c}/{i}.jpg" for i, c in enumerate(y)],
                    ["a", "b", "c"], backbone="fake", layer="top", pooling="avg", image_size=32)
    args = {"audit": ["audit", "--codes", codes, "--runs-dir", tmp_path / "runs", "--no-progress"],
            "train": ["train", "--codes", codes, "--head", "logreg", "--runs-dir", tmp_path / "runs"]}[command]
    with h5py.File(codes, "a") as f:
        dataset_replaced("codes", X.astype(np.float64))(f)
    code, _, err, _ = run(args, capsys)
    assert code == 0, err  # float64 within range: read as float32
    with h5py.File(codes, "a") as f:
        dataset_replaced("codes", np.full((60, 8), 1e300))(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be printed beside the error line
        code, _, err, _ = run(args, capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and "float32's range" in err, err


def _labels_file(data, rows):
    with open(data / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["image", "label"], *rows])
    return data / "labels.csv"


@pytest.mark.parametrize("label", ["a\u2028b", "a\u0085b", "a\tb"])
def test_a_label_with_a_line_break_in_a_labels_file_is_one_error_line(tmp_path, capsys, label):
    data = make_images(tmp_path / "d", n_classes=2, per_class=3)
    images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.JPG"))
    labels = _labels_file(data, [[images[0], label], *[[p, "x"] for p in images[1:]]])
    code, _, err, _ = run(["codes", "--data", data, "--labels", labels, "--cache-dir", tmp_path / "cache", *FAST], capsys)
    assert code == 2 and user_error_lines(err) == err.strip().splitlines() and "line break" in err, err


def test_labels_file_rows_naming_files_outside_the_data_folder_are_listed_not_read(tmp_path, capsys):
    """Rows naming ``../outside.jpg`` or ``/etc/passwd``: nothing outside the folder is read; they
    are listed as missing in the code set, which train, audit and the next update still read."""
    data = make_images(tmp_path / "d", n_classes=2, per_class=6)
    (tmp_path / "outside.jpg").write_bytes((data / "class0" / "img000.JPG").read_bytes())
    images = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.JPG"))
    labels = _labels_file(data, [["../outside.jpg", "x"], ["/etc/passwd", "y"],
                                 *[[p, "xy"[i % 2]] for i, p in enumerate(images)]])
    codes_args = ["codes", "--data", data, "--labels", labels, "--cache-dir", tmp_path / "cache", *FAST]
    code, _, err, _ = run(codes_args, capsys)
    assert code == 0 and "../outside.jpg (listed in the labels file, not found)" in err, err
    (path,) = [p for p in (tmp_path / "cache").rglob("*.h5") if not p.parent.name.endswith(".parts")]
    with h5py.File(path, "r") as f:
        assert len(f["paths"]) == 12 and not any(p.startswith((b"..", b"/")) for p in f["paths"][()])
        assert sorted(f["failed_paths"].asstr()[()]) == ["../outside.jpg", "/etc/passwd"]
    for args in (["train", "--codes", path, "--head", "prototype", "--runs-dir", tmp_path / "runs"],
                 ["audit", "--codes", path, "--runs-dir", tmp_path / "runs", "--no-progress"], codes_args):
        code, _, err, _ = run(args, capsys)
        assert code == 0 and "Traceback" not in err, (args[0], err)
