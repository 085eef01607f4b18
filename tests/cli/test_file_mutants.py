"""Every kind of file the project reads back, mutated field by field, fed to every entry point
that reads it: each mutant is either used as it is or refused in one ``error:`` line (exit 2),
never a traceback.

A mutant takes one field (at any depth up to three) and makes it missing, mistyped, out of
range, huge, deeply nested or non-finite; the file as a whole is also emptied, truncated and
nested 100,000 levels deep. File kinds: a run's ``record.json``, ``head.json`` and
``head.npz``, ``predictions.csv``, a sweep's ``summary.json``, a model's ``cnn_codes.json``
and a code set (its datasets and attributes).
"""
import copy
import csv
import io
import json
import math
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from helpers import dataset_replaced

from pipeline.cli.main import main, run_cli
from pipeline.deploy import META_NAME

DEEP = "\x00deep\x00"
VALUES = {
    "text": "x", "whole number": 7, "negative": -1, "huge number": 10**40, "fraction": 0.5,
    "largest float": 1e308, "infinite": math.inf, "not a number": math.nan, "null": None, "true": True,
    "empty list": [], "empty object": {}, "nested 100,000 deep": DEEP, "200,000 characters": "a" * 200_000,
    "100,000 numbers": [1] * 100_000, "path out of the folder": "../../../etc/passwd",
}
FILE_MUTANTS = {"empty file": "", "truncated": None, "not JSON": "{'no': quotes}", "a list": "[]",
                "a number": "3", "nested 100,000 deep": "[" * 100_000 + "]" * 100_000}


def dumps(doc) -> str:
    deep = "[" * 100_000 + "]" * 100_000
    return json.dumps(doc).replace(json.dumps(DEEP), deep)


def field_paths(doc, depth=3, at=()):
    """Paths to every field (dict keys; the first element of a list) down to ``depth``."""
    if depth == 0:
        return
    if isinstance(doc, dict):
        items = doc.items()
    elif isinstance(doc, list) and doc:
        items = [(0, doc[0])]
    else:
        return
    for k, v in items:
        yield at + (k,)
        yield from field_paths(v, depth - 1, at + (k,))


def mutated(doc, path, value, delete=False):
    doc = copy.deepcopy(doc)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def json_mutants(doc):
    """(name, file text) of every mutant of the JSON document ``doc``."""
    text = json.dumps(doc, indent=2)
    for name, mutant in FILE_MUTANTS.items():
        yield name, text[:len(text) // 2] if mutant is None else mutant
    for path in field_paths(doc):
        where = ".".join(map(str, path))
        yield f"{where} missing", dumps(mutated(doc, path, None, delete=True))
        for name, value in VALUES.items():
            yield f"{where} {name}", dumps(mutated(doc, path, value))


def feed(module, argv, capsys):
    """Run one entry point in process: (exit code, stderr lines); an exception that escapes
    the command line's handling (a traceback for the user) is the outcome "traceback"."""
    try:
        run_cli(main, [module, *map(str, argv)])
    except SystemExit as exc:
        code = exc.code
    except Reached:
        raise
    except Exception as exc:  # noqa: BLE001 - what a user would see as a traceback
        capsys.readouterr()
        return "traceback", [f"{type(exc).__name__}: {str(exc)[:200]}"]
    else:
        code = 0
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def check_outcomes(results, min_mutants):
    """Every outcome used (0) or refused in one error line (2)."""
    bad = [(name, module, code, err[-3:]) for name, module, code, err in results
           if not (code == 0 or (code == 2 and len(err) == 1 and err[0].startswith("error: ")))]
    assert not bad, f"{len(bad)} of {len(results)} mutant runs broke a promise:\n" + "\n".join(map(str, bad))
    mutants = {name for name, *_ in results}
    assert len(mutants) >= min_mutants, len(mutants)
    refused = sum(code == 2 for _, _, code, _ in results)
    assert 0 < refused < len(results)  # both outcomes occur: the mutants reach the checks, and pass them where harmless
    return len(mutants), len(results)


def _copy_run(made, run, where):
    dst = made["t"] / "mutants" / where
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(run, dst)
    for p in ("model.keras", "model.tflite", "model.onnx", "exports.json", "report.html"):
        (dst / p).unlink(missing_ok=True)
    return dst


@pytest.fixture
def stand_ins(monkeypatch):
    """Export stops once its model is built and fine-tuning before it computes activations
    (what follows reads no file of the run); conv bases of the same making are built once."""
    import functools

    import pipeline.deploy._models as models
    import pipeline.runs._finetune as finetune

    def stop(*a, **k):
        raise Reached

    monkeypatch.setattr(models, "save_model", stop)
    monkeypatch.setattr(finetune, "_cut_activations", stop)
    monkeypatch.setattr(models, "build_base", functools.lru_cache(maxsize=8)(models.build_base))


class Reached(Exception):
    """The entry point got past every read of the mutated file."""


def feed_all(name, entries, capsys, results):
    for module, argv in entries:
        try:
            code, err = feed(module, argv, capsys)
        except Reached:
            code, err = 0, []
        results.append((name, module, code, err))


@pytest.mark.slow
def test_record_mutants_are_used_or_refused_in_one_line(made, capsys, stand_ins):
    base = json.loads((made["logreg"] / "record.json").read_text())
    run = _copy_run(made, made["logreg"], "record")
    results = []
    for name, text in json_mutants(base):
        (run / "record.json").write_text(text)
        feed_all(name, [("report", [run]), ("compare", ["--runs-dir", run.parent]),
                        ("export", [run, "--formats", "keras"]), ("finetune", [run, "--epochs", "1"])], capsys, results)
    n, runs = check_outcomes(results, 600)
    print(f"record.json: {n} mutants, {runs} entry-point runs")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["logreg", "softmax"])
def test_head_description_mutants_are_used_or_refused_in_one_line(made, capsys, stand_ins, head):
    """head.json, read by export, fine-tuning, predict (through export) and report (recomputing
    predictions when predictions.csv is gone)."""
    run = _copy_run(made, made[head], f"head-{head}")
    base = json.loads((run / "head.json").read_text())
    (run / "predictions.csv").unlink()
    results = []
    for name, text in json_mutants(base):
        (run / "head.json").write_text(text)
        feed_all(name, [("export", [run, "--formats", "keras"]), ("finetune", [run, "--epochs", "1"]),
                        ("predict", [made["data"] / "class0", "--model", run, "--out", made["t"] / "predictions.csv"]),
                        ("report", [run])], capsys, results)
        (run / "predictions.csv").unlink(missing_ok=True)
    n, runs = check_outcomes(results, 150)
    print(f"head.json ({head}): {n} mutants, {runs} entry-point runs")


def array_mutants(arrays: dict):
    """(name, arrays) with one array missing, of text, of objects refused, reshaped, emptied,
    non-finite, huge."""
    for k, a in arrays.items():
        def with_(v, k=k):
            return {**arrays, k: v}
        yield f"{k} missing", {n: v for n, v in arrays.items() if n != k}
        yield f"{k} text", with_(np.array(["x"] * max(1, a.size)))
        yield f"{k} flattened", with_(a.reshape(-1))
        yield f"{k} extra axis", with_(a[None])
        yield f"{k} empty", with_(a.reshape(-1)[:0])
        yield f"{k} scalar", with_(np.asarray(a.reshape(-1)[0] if a.size else 0))
        yield f"{k} one value more", with_(np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]))
        if a.dtype.kind == "f":
            yield f"{k} NaN", with_(np.full_like(a, np.nan))
            yield f"{k} infinite", with_(np.full_like(a, np.inf))
            yield f"{k} huge", with_(np.full_like(a, 1e38))
        yield f"{k} complex", with_(a.astype(np.complex64) if a.dtype.kind in "fiub" else a)


@pytest.mark.slow
def test_head_array_mutants_are_used_or_refused_in_one_line(made, capsys, stand_ins):
    run = _copy_run(made, made["logreg"], "head-arrays")
    with np.load(run / "head.npz") as z:
        arrays = {k: z[k] for k in z.files}
    (run / "predictions.csv").unlink()
    results = []
    mutants = list(array_mutants(arrays)) + [("not a zip", None), ("pickled objects", "pickle")]
    for name, mutant in mutants:
        if mutant is None:
            (run / "head.npz").write_bytes(b"PK\x03\x04 truncated")
        elif mutant == "pickle":
            np.savez(run / "head.npz", **{**arrays, "coef": np.array([{"a": 1}], dtype=object)})
        else:
            np.savez(run / "head.npz", **mutant)
        feed_all(name, [("export", [run, "--formats", "keras"]), ("report", [run])], capsys, results)
        (run / "predictions.csv").unlink(missing_ok=True)
    n, runs = check_outcomes(results, 60)
    print(f"head.npz: {n} mutants, {runs} entry-point runs")


def csv_mutants(rows: list[list[str]]):
    """(name, CSV text): each cell of the header and of the first row replaced."""
    def text(rs):
        out = io.StringIO()
        csv.writer(out).writerows(rs)
        return out.getvalue()

    yield "empty file", ""
    yield "header only", text(rows[:1])
    yield "not UTF-8", None
    yield "one column", "path\nx.jpg\n"
    for r in range(2):
        for c in range(len(rows[r])):
            where = f"{'header' if r == 0 else 'row 1'} {rows[0][c]}"
            for name, value in {**{k: v for k, v in VALUES.items() if isinstance(v, (str, int, float))},
                                "formula": "=1+1", "empty": "", "absolute path": "/etc/passwd"}.items():
                mutated_rows = copy.deepcopy(rows)
                mutated_rows[r][c] = str(value) if value != DEEP else "[" * 1000
                yield f"{where} {name}", text(mutated_rows)
            yield f"{where} missing", text([row[:c] + row[c + 1:] for row in rows])


@pytest.mark.slow
def test_predictions_mutants_are_used_or_refused_in_one_line(made, capsys):
    run = _copy_run(made, made["logreg"], "predictions")
    rows = list(csv.reader(io.StringIO((made["logreg"] / "predictions.csv").read_text())))
    results = []
    for name, text in csv_mutants(rows):
        (run / "predictions.csv").write_bytes(b"path,true\n\xff\xfe,x\n" if text is None else text.encode())
        feed_all(name, [("report", [run])], capsys, results)
    n, runs = check_outcomes(results, 100)
    print(f"predictions.csv: {n} mutants, {runs} entry-point runs")


@pytest.mark.slow
def test_sweep_summary_mutants_are_used_or_refused_in_one_line(made, capsys):
    run = _copy_run(made, made["sweep"], "sweep")
    base = json.loads((run / "summary.json").read_text())
    results = []
    for name, text in json_mutants(base):
        (run / "summary.json").write_text(text)
        feed_all(name, [("report", [run])], capsys, results)
    n, runs = check_outcomes(results, 300)
    print(f"summary.json: {n} mutants, {runs} entry-point runs")


@pytest.mark.slow
def test_model_metadata_mutants_are_used_or_refused_in_one_line(made, capsys):
    """cnn_codes.json inside a model file, read by predict."""
    with zipfile.ZipFile(made["model"]) as z:
        members = {n: z.read(n) for n in z.namelist()}
    base = json.loads(members[META_NAME])
    path = made["t"] / "mutants" / "model.keras"
    path.parent.mkdir(exist_ok=True)
    results = []
    for name, text in json_mutants(base):
        with zipfile.ZipFile(path, "w") as z:
            for n, b in members.items():
                z.writestr(n, text if n == META_NAME else b)
        feed_all(name, [("predict", [made["data"] / "class1", "--model", path, "--out", made["t"] / "predictions.csv"])],
                 capsys, results)
    n, runs = check_outcomes(results, 100)
    print(f"{META_NAME}: {n} mutants, {runs} entry-point runs")


def dataset_mutants(f):
    """(name, change(f)) for each dataset and attribute of an open code file."""
    replace = dataset_replaced
    def drop(name):
        def change(h):
            if name in h:
                del h[name]
        return change

    for name in ("codes", "labels", "split", "paths", "class_names", "part_names", "row_part", "row_in_part",
                 "fingerprints", "digests", "failed_paths"):
        n = len(f["paths"])
        yield f"{name} missing", drop(name)
        yield f"{name} text", replace(name, np.array([b"x"] * n))
        yield f"{name} whole numbers", replace(name, np.arange(n))
        yield f"{name} fractions", replace(name, np.linspace(0, 1, n))
        yield f"{name} one entry", replace(name, np.zeros(1))
        yield f"{name} 2-D", replace(name, np.zeros((n, 2)))
        yield f"{name} empty", replace(name, np.zeros(0))
        yield f"{name} huge values", replace(name, np.full(n, 10**12))
        yield f"{name} negative", replace(name, np.full(n, -5))
        yield f"{name} NaN", replace(name, np.full(n, np.nan))
    n, k = len(f["paths"]), len(f["class_names"])
    yield "codes infinite", replace("codes", np.full(f["codes"].shape, np.inf, np.float32))
    yield "codes 1-D", replace("codes", np.zeros(n, np.float32))
    yield "codes 3-D", replace("codes", np.zeros((n, 2, 2), np.float32))
    yield "labels beyond the classes", replace("labels", np.full(n, k + 3))
    yield "labels as bytes", replace("labels", np.array([b"\x01"] * n))
    yield "split 7", replace("split", np.full(n, 7, np.int8))
    yield "paths absolute", replace("paths", np.array([b"/etc/passwd"] * n))
    yield "paths out of the folder", replace("paths", np.array([b"../../x.jpg"] * n))
    yield "class names duplicated", replace("class_names", np.array([b"a"] * k))
    yield "class name with a line break", replace("class_names", np.array([b"a\nb"] + [b"c%d" % i for i in range(k - 1)]))
    yield "part names out of the folder", replace("part_names", np.array([b"../../../x.h5"]))
    yield "targets as well as labels", replace("targets", np.full((n, k + 1), 3))

    def outside(h):  # codes reaching a file outside the parts folder
        src = h5py.VirtualSource("../outside.h5", "codes", shape=h["codes"].shape)
        layout = h5py.VirtualLayout(h["codes"].shape, dtype=h["codes"].dtype)
        layout[:] = src[:]
        del h["codes"]
        h.create_virtual_dataset("codes", layout, fillvalue=np.nan)
    yield "codes outside the parts folder", outside
    for attr in ("code_shape", "split_fractions", "split_seed", "layout", "data_root", "image_size", "backbone",
                 "layer", "pooling", "format_version", "task", "members", "resize", "tta"):
        for label, value in (("text", "x"), ("number", 7), ("negative", -3), ("JSON list", "[1, 2"),
                             ("deep", "[" * 100_000), ("huge", "a" * 100_000)):
            def change(h, attr=attr, value=value):
                h.attrs[attr] = value
            yield f"attribute {attr} {label}", change
        def gone(h, attr=attr):
            if attr in h.attrs:
                del h.attrs[attr]
        yield f"attribute {attr} missing", gone


@pytest.mark.slow
def test_code_set_mutants_are_used_or_refused_in_one_line(made, capsys):
    """A code set, read by train, sweep, audit and stage 1 (which reads its index to update it)."""
    code_file, data, cache = made["code_file"], made["data"], made["t"] / "cache"
    original = code_file.read_bytes()
    runs = made["t"] / "mutants" / "codes-runs"
    with h5py.File(code_file, "r") as f:
        mutants = list(dataset_mutants(f))
    (made["t"] / "cache" / "outside.h5").write_bytes(b"")
    results = []
    for name, change in mutants:
        code_file.write_bytes(original)
        with h5py.File(code_file, "a") as f:
            change(f)
        mutant = code_file.read_bytes()
        for module, argv in (("train", ["--codes", code_file, "--head", "prototype", "--runs-dir", runs]),
                             ("sweep", ["--codes", code_file, "--heads", "prototype", "--n", "1", "--repeats", "1",
                                        "--jobs", "1", "--runs-dir", runs, "--no-progress"]),
                             ("audit", ["--codes", code_file, "--runs-dir", runs, "--no-progress"]),
                             ("codes", ["--data", data, "--cache-dir", cache, "--weights", "none", "--image-size", "32",
                                        "--no-progress"])):
            code_file.write_bytes(mutant)
            feed_all(name, [(module, argv)], capsys, results)
    code_file.write_bytes(original)
    n, runs_ = check_outcomes(results, 150)
    print(f"code set: {n} mutants, {runs_} entry-point runs")
