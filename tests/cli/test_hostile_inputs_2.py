"""A second corpus of hostile inputs: files handed to the tool (run folders, code sets, model
files, predictions) crafted or damaged, special files where files are expected, numbers no
machine can honour, commands pointed at the wrong thing. Each is met by the entry point that
would meet it in real use and must end in exactly one ``error:`` line, exit code 2, no
traceback, and leave the cache byte-identical.
"""
import json
import os
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from helpers import dataset_replaced

from pipeline.cli.main import main, run_cli
from pipeline.deploy import META_NAME

pytestmark = pytest.mark.slow


def _copy(w, run, name):
    dst = w["t"] / "hostile2" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(run, dst)
    for p in ("model.keras", "report.html"):
        (dst / p).unlink(missing_ok=True)
    return dst


def _edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _code_copy(w, name, change):
    """A copy of the code set (format 1: codes inside) changed by ``change(h5 file)``."""
    dst = w["t"] / "hostile2" / f"{name}.h5"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(w["code_file"], "r") as src, h5py.File(dst, "w") as f:
        for k in src:  # format 1: the codes in the file itself, no parts
            if k not in ("part_names", "row_part", "row_in_part"):
                f[k] = src[k][()]
        f.attrs.update(src.attrs)
        f.attrs["format_version"] = 1
        change(f)
    return dst


def _model_copy(w, name, change=None, raw=None):
    dst = w["t"] / "hostile2" / f"{name}.keras"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(w["model"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members[META_NAME])
    if change:
        change(meta)
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, (raw if raw is not None else json.dumps(meta)) if n == META_NAME else b)
    return dst


def _fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)
    return path


def cases(w):
    """(name, command, arguments, what the one error line must say)."""
    t, data, cache, code = w["t"], w["data"], w["t"] / "cache", w["code_file"]
    run, img = w["logreg"], data / "class0"
    h = t / "hostile2"
    h.mkdir(exist_ok=True)
    codes = lambda *a: ["--data", data, "--cache-dir", cache, "--weights", "none", "--image-size", "32",
                        "--no-progress", *a]
    (h / "notes.txt").write_text("just text")
    (h / "fake-images").mkdir(exist_ok=True)
    for i in range(3):
        (h / "fake-images" / f"{i}.jpg").write_text("not a jpeg")
    (h / "folder-only").mkdir(exist_ok=True)

    def record(name, change):
        r = _copy(w, run, name)
        _edit_json(r / "record.json", change)
        return r

    def record_text(name, text):
        r = _copy(w, run, name)
        (r / "record.json").write_text(text)
        return r

    def head(name, change):
        r = _copy(w, run, name)
        change(r)
        return r

    def predictions(name, rows):
        r = _copy(w, run, name)
        (r / "predictions.csv").write_text(rows)
        return r

    def summary(name, change):
        r = _copy(w, w["sweep"], name)
        _edit_json(r / "summary.json", change)
        return r

    deep = "[" * 200_000 + "]" * 200_000
    header = "path,split,true,predicted,confidence,true_probability\n"
    return [
        # run records handed over or damaged
        ("record nested 200,000 deep", "report", [record_text("deep", '{"a": ' + deep + "}")], "record"),
        ("record without class_names", "export", [record("no-classes", lambda d: d.pop("class_names")),
                                                  "--formats", "keras"], "class_names"),
        ("record version a string", "report", [record("version-text", lambda d: d.update(record_version="2"))],
         "record_version"),
        ("metrics a list", "compare", ["--runs-dir", record("metrics-list", lambda d: d.update(metrics=[1])).parent],
         "metrics"),
        ("accuracy above 1", "report", [record("accuracy", lambda d: d["metrics"].update(accuracy=1.5))], "accuracy"),
        ("confusion not square", "report", [record("confusion", lambda d: d.update(confusion=[[1, 2]]))], "confusion"),
        ("class names repeated", "report", [record("dup-classes", lambda d: d.update(class_names=["a", "a", "b"]))],
         "listed twice"),
        ("class name with a line break", "export", [record("newline", lambda d: d["class_names"].__setitem__(
            0, "a\nb")), "--formats", "keras"], "line break"),
        ("unknown run kind", "report", [record("kind", lambda d: d.update(kind="magic"))], "kind"),
        ("unknown backbone in the code attributes", "export", [record("backbone", lambda d: d["code_attrs"].update(
            backbone="resnet9000")), "--formats", "keras"], "unknown backbone"),
        ("unknown layer in the code attributes", "export", [record("layer", lambda d: d["code_attrs"].update(
            layer="no_such_layer")), "--formats", "keras"], "has no layer"),
        ("image size a billion", "export", [record("size", lambda d: d["code_attrs"].update(image_size="1000000000")),
                                            "--formats", "keras"], "image_size"),
        ("code shape not JSON", "export", [record("shape", lambda d: d["code_attrs"].update(code_shape="[1, 2")),
                                           "--formats", "keras"], "code_shape"),
        ("negative image count", "report", [record("n-test", lambda d: d.update(n_test=-3))], "n_test"),
        ("infinite training seconds", "report", [record_text("inf-seconds", (run / "record.json").read_text().replace(
            '"train_seconds": ', '"train_seconds": Infinity, "x": '))], "train_seconds"),
        ("record.json a pipe", "report", [_fifo(_copy(w, run, "pipe-record") / "record.json").parent], "regular file"),
        ("fine-tuning codes that do not say their folder", "finetune", [record(
            "no-root", lambda d: d["code_attrs"].pop("data_root"))], "data_root"),
        # heads
        ("head.json a list", "export", [head("head-list", lambda r: (r / "head.json").write_text("[1, 2]")),
                                        "--formats", "keras"], "head description"),
        ("head.json names an unknown head", "export", [head("head-name", lambda r: _edit_json(
            r / "head.json", lambda d: d.update(head="svm"))), "--formats", "keras"], "head"),
        ("head parameters of the wrong type", "export", [head("head-params", lambda r: _edit_json(
            r / "head.json", lambda d: d["params"].update(Cs="many"))), "--formats", "keras"], "parameters"),
        ("head.npz without its coefficients", "export", [head("no-coef", lambda r: np.savez(
            r / "head.npz", **{k: v for k, v in np.load(r / "head.npz").items() if k != "coef"})),
            "--formats", "keras"], "coef"),
        ("head.npz coefficients of the wrong shape", "export", [head("coef-shape", lambda r: np.savez(
            r / "head.npz", **{**np.load(r / "head.npz"), "coef": np.zeros((2, 5))})), "--formats", "keras"], "coef"),
        ("head.npz with infinite weights", "export", [head("coef-inf", lambda r: np.savez(
            r / "head.npz", **{**np.load(r / "head.npz"), "mean": np.full(1280, np.inf)})), "--formats", "keras"],
         "finite"),
        ("head.npz holding pickled objects", "export", [head("pickled", lambda r: np.savez(
            r / "head.npz", coef=np.array([{"x": 1}], dtype=object))), "--formats", "keras"], "head.npz"),
        ("head.npz a pipe", "export", [head("npz-pipe", lambda r: _fifo(r / "head.npz")), "--formats", "keras"],
         "regular file"),
        ("head.json a pipe", "export", [head("json-pipe", lambda r: _fifo(r / "head.json")), "--formats", "keras"],
         "regular file"),
        # predictions.csv read back for the report
        ("predictions leading out of the data folder", "report",
         [predictions("escape", header + "../../../../etc/passwd,test,class0,class1,0.9,0.1\n")], "data folder"),
        ("predictions with an absolute path", "report",
         [predictions("absolute", header + "/etc/passwd,test,class0,class1,0.9,0.1\n")], "data folder"),
        ("predictions with a NaN confidence", "report",
         [predictions("nan", header + "class0/a.png,test,class0,class1,nan,0.1\n")], "confidence"),
        ("predictions with a confidence of 7", "report",
         [predictions("seven", header + "class0/a.png,test,class0,class1,7,0.1\n")], "confidence"),
        ("predictions without a header", "report", [predictions("headless", "a,b\nc,d\n")], "predictions"),
        ("predictions not UTF-8", "report", [head("latin", lambda r: (r / "predictions.csv").write_bytes(
            header.encode() + b"\xff\xfe,test,a,b,0.5,0.5\n"))], "predictions"),
        # sweep summaries
        ("sweep summary without rows", "report", [summary("no-rows", lambda d: d.pop("summary"))], "summary"),
        ("sweep N as text", "report", [summary("n-text", lambda d: d.update(ns=["one"]))], "ns"),
        ("sweep accuracy negative", "report", [summary("acc", lambda d: d["summary"][0].update(accuracy_mean=-1))],
         "accuracy_mean"),
        # code sets
        ("labels as bytes", "train", ["--codes", _code_copy(w, "labels-bytes", dataset_replaced("labels", np.array(
            [b"x"] * 24)))], "labels"),
        ("paths as whole numbers", "train", ["--codes", _code_copy(w, "paths-int", dataset_replaced("paths", np.arange(24)))],
         "paths"),
        ("a label beyond the classes", "train", ["--codes", _code_copy(w, "label-9", dataset_replaced("labels", np.full(
            24, 9)))], "labels"),
        ("codes 1-D", "train", ["--codes", _code_copy(w, "codes-1d", dataset_replaced("codes", np.zeros(24, np.float32)))],
         "codes"),
        ("codes holding inf", "train", ["--codes", _code_copy(w, "codes-inf", dataset_replaced("codes", np.full(
            (24, 1280), np.inf, np.float32)))], "infinite"),
        ("split value 9", "audit", ["--codes", _code_copy(w, "split-9", dataset_replaced("split", np.full(24, 9, np.int8))),
                                    "--runs-dir", h / "runs"], "split"),
        ("paths out of the data folder", "audit", ["--codes", _code_copy(w, "paths-out", dataset_replaced("paths", np.array(
            [f"../../x{i}.jpg".encode() for i in range(24)]))), "--runs-dir", h / "runs"], "data folder"),
        ("class names repeated in a code set", "sweep", ["--codes", _code_copy(w, "dup", dataset_replaced("class_names", np.array(
            [b"a", b"a", b"b"]))), "--n", "1", "--jobs", "1"], "class_names"),
        ("codes reaching a file outside the parts folder", "train", ["--codes", _code_copy(w, "outside", _outside)],
         "outside its parts folder"),
        ("a code set's split attribute nested deep", "codes", codes("--cache-dir", _deep_split(w)),
         "split"),
        ("a part file given as a code set", "train", ["--codes", next((cache).rglob("part-*.h5"))],
         "code file"),
        ("a folder given as a code set", "train", ["--codes", h / "folder-only"], "code file"),
        ("a code file that is a pipe", "train", ["--codes", _fifo(h / "pipe.h5")], "regular file"),
        # model files
        ("model metadata not JSON", "predict", [img, "--model", _model_copy(w, "meta-text", raw="{oops")], META_NAME),
        ("model metadata nested deep", "predict", [img, "--model", _model_copy(w, "meta-deep", raw=deep)], META_NAME),
        ("model image size a billion", "predict", [img, "--model", _model_copy(
            w, "meta-size", lambda m: m.update(image_size=10**9))], "image_size"),
        ("model thresholds of the wrong length", "predict", [img, "--model", _model_copy(
            w, "meta-thr", lambda m: m.update(task="multi-label", thresholds=[0.5]))], "thresholds"),
        ("model with more classes than outputs", "predict", [img, "--model", _model_copy(
            w, "meta-classes", lambda m: m.update(class_names=["a", "b", "c", "d"]))], "gives"),
        ("model classes repeated", "predict", [img, "--model", _model_copy(
            w, "meta-dup", lambda m: m.update(class_names=["a", "a", "b"]))], "listed twice"),
        ("model file truncated", "predict", [img, "--model", _truncated(w)], "not a model"),
        # numbers no machine can honour
        ("a batch beyond memory", "codes", codes("--batch-size", str(10**9)), "--batch-size"),
        ("an image size beyond any base", "codes", codes("--image-size", "100000"), "--image-size"),
        ("predict batch beyond memory", "predict", [img, "--model", w["model"], "--batch-size", str(10**9)],
         "--batch-size"),
        ("scratch images beyond memory", "scratch", ["--codes", code, "--train-size", "4000", "--batch-size", "4096"],
         "--batch-size"),
        ("a seed beyond 32 bits", "train", ["--codes", code, "--seed", str(2**40)], "--seed"),
        ("an audit threshold of 2", "audit", ["--codes", code, "--threshold", "2", "--runs-dir", h / "runs"],
         "threshold"),
        # commands pointed at the wrong thing
        ("predict on a text file", "predict", [h / "notes.txt", "--model", w["model"]], "not an image"),
        ("predict on a folder of fake images", "predict", [h / "fake-images", "--model", w["model"]],
         "could be read"),
        ("report on a folder with no run", "report", [h / "folder-only"], "not a run folder"),
        ("export to an unknown format", "export", [run, "--formats", "pdf"], "--formats"),
    ]


def _outside(f):
    src = h5py.VirtualSource("../elsewhere.h5", "codes", shape=f["codes"].shape)
    layout = h5py.VirtualLayout(f["codes"].shape, dtype=f["codes"].dtype)
    layout[:] = src[:]
    del f["codes"]
    f.create_virtual_dataset("codes", layout, fillvalue=np.nan)


def _deep_split(w):
    """A cache whose code set states its split nested 100,000 levels deep."""
    cache = w["t"] / "hostile2" / "deep-cache"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(w["t"] / "cache", cache)
    for f in cache.glob("*/*/*.h5"):
        with h5py.File(f, "a") as h:
            h.attrs["split_fractions"] = "[" * 100_000
    return cache


def _truncated(w):
    dst = w["t"] / "hostile2" / "truncated.keras"
    data = w["model"].read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def _snapshot(cache):
    return {p: p.read_bytes() for p in sorted(cache.rglob("*.h5"))}


def test_hostile_files_and_numbers_give_one_line_and_keep_the_cache(made, capsys):
    table = cases(made)
    assert len(table) >= 60 and len({name for name, *_ in table}) == len(table)
    before = _snapshot(made["t"] / "cache")
    failures = []
    for name, module, argv, expect in table:
        try:
            run_cli(main, [module, *map(str, argv)])
            code = 0
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        if not (code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]):
            failures.append((name, code, lines[-3:]))
    assert not failures, "\n".join(map(str, failures))
    assert _snapshot(made["t"] / "cache") == before
    print(f"{len(table)} hostile cases")
