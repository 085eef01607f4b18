"""Helpers shared by the tests: synthetic images and code files, the installed command,
comparisons of codes that fail on corrupted data, and a checker of HTML reports."""
import base64
import html.parser
import io
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CALTECH = ROOT.parent / "shared" / "data" / "caltech101" / "101_ObjectCategories"

needs_caltech = pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared Caltech-101 not present")

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


def make_images(root: Path, n_classes=3, per_class=12, size=(40, 48), seed=0):
    """Class c: noisy images of one colour, as JPEG/PNG mixes, some in a sub-folder."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        d = root / f"class{c}"
        for i in range(per_class):
            sub = d / "sub" if i % 5 == 4 else d
            sub.mkdir(parents=True, exist_ok=True)
            arr = np.clip(rng.normal(COLOURS[c], 30, size + (3,)), 0, 255).astype(np.uint8)
            ext = ".JPG" if i % 3 == 0 else (".png" if i % 3 == 1 else ".jpeg")
            Image.fromarray(arr).save(sub / f"img{i:03d}{ext}")
    return root


# Small random-weight backbone settings used by the stage-1 tests.
FAST = dict(backbone="efficientnet_lite0", weights="none", image_size=32, batch_size=8, progress=False)


# The installed console script (pip install -e .): the tests run what users run.
CNN_CODES = str(Path(sys.executable).with_name("cnn-codes"))


def user_env() -> dict:
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: TensorFlow's start-up lines held back
    return env


def run_script(command, *args, cwd=ROOT, timeout=300):
    """Run ``cnn-codes <command> <args>``; returns CompletedProcess with text stdout/stderr."""
    return subprocess.run([CNN_CODES, command, *map(str, args)], cwd=cwd, env=user_env(), capture_output=True,
                          text=True, timeout=timeout)


def user_error_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if l.startswith("error:")]


def write_code_file(path, X, y, split, paths, class_names, **attrs):
    """A code file written directly in the stage-1 layout (format 1: the codes inside the file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["codes"] = np.asarray(X, np.float32)
        f["labels"], f["split"] = np.asarray(y), np.asarray(split, np.int8)
        f.create_dataset("paths", data=list(paths), dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=list(class_names), dtype=h5py.string_dtype())
        f.attrs.update(attrs)
    return path


def as_format1(path, drop=()):
    """Rewrite a code set as version 0.1.0 wrote it (format 1: the codes inside the file, no
    parts), leaving out the datasets ``drop``; its parts folder is removed."""
    import shutil

    path = Path(path)
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f if k not in ("part_names", "row_part", "row_in_part", *drop)}
        attrs = {k: v for k, v in f.attrs.items() if k not in ("format_version", "parts")}
    path.unlink()
    shutil.rmtree(path.with_name(path.stem + ".parts"))
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
        f.attrs.update(attrs)


def assert_codes_close(got, want, rtol=1e-5, min_scale=1e-2, err_msg=""):
    """``got`` equals the codes ``want`` within ``rtol`` of their scale (the largest absolute
    code of ``want``); ``rtol=0`` asks for equality. Codes whose scale is below ``min_scale``
    are refused: any two such sets would pass an absolute tolerance, whatever they hold."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    prefix = f"{err_msg}: " if err_msg else ""
    assert got.shape == want.shape, f"{prefix}shapes {got.shape} and {want.shape}"
    assert np.isfinite(got).all() and np.isfinite(want).all(), f"{prefix}codes that are not finite"
    scale = float(np.abs(want).max()) if want.size else 0.0
    assert scale >= min_scale, f"{prefix}codes of scale {scale:g}: too small for a comparison to mean anything"
    err = float(np.abs(got - want).max())
    assert err <= rtol * scale, f"{prefix}codes differ by up to {err:g}, more than {rtol:g} of their scale {scale:g}"


def fake_codes(path, n_classes=4, per_class=(30, 12, 8, 20), dim=16, seed=0):
    """A synthetic cached code file in the stage-1 layout (separable classes)."""
    from pipeline.data import TEST, VAL

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.normal(0, 4, (n_classes, dim))[y] + rng.normal(0, 1, (len(y), dim))
    split = np.zeros(len(y), np.int8)
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        split[idx[: len(idx) // 4]] = TEST
        split[idx[len(idx) // 4: len(idx) // 4 + 2]] = VAL
    write_code_file(path, X, y, split, [f"c{c}/{i}.jpg" for i, c in enumerate(y)], [f"c{c}" for c in range(n_classes)],
                    backbone="fake", layer="top", pooling="avg", image_size=32)
    return path, y, split


VOID = {"meta", "img", "br", "hr", "input", "link", "col", "area", "base", "wbr", "source"}


class Checker(html.parser.HTMLParser):
    """Tags properly nested and closed; every image source collected."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.errors, self.doctype = [], [], [], False

    def handle_decl(self, decl):
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()


def check_html(path):
    """Parse a report: valid nesting, a doctype, every image reference resolving to an image."""
    from PIL import Image

    c = Checker()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    assert c.doctype and not c.errors and not c.stack, (c.errors, c.stack)
    for img in c.images:
        src = img["src"]
        if src.startswith("data:"):
            head, data = src.split(",", 1)
            assert head in ("data:image/png;base64", "data:image/jpeg;base64")
            Image.open(io.BytesIO(base64.b64decode(data))).verify()
        else:  # a relative link must resolve beside the report
            Image.open(path.parent / src).verify()
        assert img.get("alt")
    return c


PUBLIC = ("paths", "labels", "split", "class_names", "fingerprints", "digests", "failed_paths")


def contents(path):
    """Every dataset of a code file, read whole."""
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


def assert_same_codes(a, b, rtol=1e-5, ordered=True, keys=PUBLIC):
    """The same code set whatever computed it: codes within ``rtol`` of their scale, the datasets
    ``keys`` identical (in the same order, or with ``ordered=False`` row by row after sorting by path)."""
    da, db = contents(a), contents(b)
    if not ordered:
        for d in (da, db):
            order = np.argsort(d["paths"])
            for k in ("paths", "labels", "split", "fingerprints", "digests", "codes"):
                d[k] = d[k][order]
    for k in keys:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    assert_codes_close(da["codes"], db["codes"], rtol=rtol)


def dataset_replaced(name, value):
    """A change of an open HDF5 file: dataset ``name`` (made if missing) now holds ``value``."""
    def change(f):
        if name in f:
            del f[name]
        f[name] = value
    return change


# The attributes of a code set whose part files tests write directly (codes of 4 values).
STAGE1_ATTRS = {"backbone": "b", "layer": "l", "pooling": "avg", "image_size": 32, "preprocessing": "lite",
                "weights_id": "w", "dtype": "float32", "precision": "fp32", "tta": "none", "resize": "squash"}


def synthetic_folder(root, n: int):
    """A data set of ``n`` images in 4 classes that exist only as paths and fingerprints:
    stage 1's bookkeeping at scale without images (``class1/img0012345.jpg`` is image 12345)."""
    from pipeline.data import ImageFolder

    paths = [f"class{i % 4}/img{i:07d}.jpg" for i in range(n)]
    return ImageFolder(root, paths, np.arange(n, dtype=np.int32) % 4, [f"class{c}" for c in range(4)],
                       np.column_stack([np.full(n, 5000), 10**18 + np.arange(n)]).astype(np.int64))


def write_planned_parts(plan, file) -> None:
    """The part files of every partition of ``plan``, written directly (codes of 4 ones)."""
    from pipeline.codes import parts_dir
    from pipeline.codes._parts import PartWriter

    for p in plan.partitions:
        w = PartWriter(parts_dir(file), p.id, 4, "float32", len(p), dict(STAGE1_ATTRS, code_shape="[4]"))
        w.append(np.ones((len(p), 4), np.float32), p.paths, p.fingerprints, np.arange(1, len(p) + 1), [])
        w.close("test")
