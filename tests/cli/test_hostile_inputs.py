"""A corpus of hostile inputs, each met by the entry point that would meet it in real use.

Images that cannot be used are skipped, listed and counted in one warning line while the run
goes on; inputs that stop a run give one ``error:`` line, exit code 2, no traceback, and leave
the codes already cached byte-identical.
"""
import json
import os
import struct
import zlib

import h5py
import numpy as np
import pytest
from helpers import make_images
from PIL import Image

from pipeline.cli.main import main, run_cli

CODES = ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--no-progress"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width, height) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + _png_chunk(b"IEND", b""))


def photo(seed=0, size=(60, 80)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8))


def write_skipped(d):
    """Files that cannot be decoded: name -> what the reason must say."""
    d.mkdir(parents=True, exist_ok=True)
    full = d.parents[2] / "full.jpg"  # outside the data folder
    photo(1, (200, 200)).save(full)
    (d / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (d / "truncated.jpg").write_bytes(full.read_bytes()[:700])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("hello, I am text")
    (d / "html.jpeg").write_text("<html><body>404 not found</body></html>")
    (d / "bomb.png").write_bytes(png_header(30000, 30000))  # 900 megapixels
    (d / "header-only.png").write_bytes(png_header(100, 100)[:33])
    (d / "bad.bmp").write_bytes(b"BM" + b"\xff" * 60)
    (d / "bad.webp").write_bytes(b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8)
    (d / "bad.gif").write_bytes(b"GIF89a\x01\x00")
    (d / "loop.jpg").symlink_to(d / "loop.jpg")
    (d / "dangling.jpg").symlink_to(d / "no-such-file.jpg")
    (d / "folder.png").mkdir()  # a folder with an image's name is searched, not decoded
    return {"garbage.jpg": "UnidentifiedImageError", "truncated.jpg": "truncated", "empty.png": "",
            "text.png": "", "html.jpeg": "", "bomb.png": "DecompressionBombError", "header-only.png": "",
            "bad.bmp": "", "bad.webp": "", "bad.gif": "", "loop.jpg": "symbolic links",
            "dangling.jpg": "No such file"}


def write_converted(d):
    """Odd but valid images, decoded and converted."""
    d.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(photo(2))
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "gray16.png")
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "palette-transparent.png", transparency=0)
    frames = [photo(s) for s in (3, 4)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(np.dstack([rgb, rgb[..., 1]])).save(d / "rgba.png")
    Image.fromarray(rgb[..., 0]).convert("LA").save(d / "gray-alpha.png")
    Image.fromarray(rgb[..., 0]).save(d / "gray.jpg")
    photo(5).save(d / "ünïcødé 猫.jpg")
    photo(6).save(d / "new\nline.png")
    Image.fromarray(rgb[:1, :1]).save(d / "one-pixel.png")
    Image.fromarray(np.repeat(rgb[:1, :1], 4000, axis=1)).save(d / "1x4000.png")
    photo(7).save(d / "png-named.jpg", format="PNG")  # wrong extension, decodable
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    photo(8).save(d / "exif-rotated.jpg", exif=exif)
    Image.new("RGB", (9500, 9500), (30, 60, 90)).save(d / "90-megapixels.jpg", quality=50)
    return {p.name for p in d.iterdir()}


def cli(module, argv, capsys):
    with pytest.raises(SystemExit) as ex:
        run_cli(main, [module, *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return ex.value.code, out, err.strip().splitlines()


def test_hostile_images_are_skipped_or_converted_in_one_run(tmp_path, capsys):
    data = make_images(tmp_path / "data", n_classes=2, per_class=6)
    skipped = write_skipped(data / "class0" / "hostile")
    converted = write_converted(data / "class1" / "odd")
    bad_name = os.fsdecode(b"not-utf8-\xff.jpg")
    photo(9).save(data / "class1" / bad_name, format="JPEG")
    cache = tmp_path / "cache"
    code, out, err = cli("codes", ["--data", data, "--cache-dir", cache, *CODES], capsys)
    assert code == 0
    n_skipped = len(skipped) + 1
    assert err[0].startswith(f"warning: {n_skipped} image(s) skipped, listed in failed_paths: ")
    assert len(err) == 2 and err[1].startswith("note: 1 image(s) over Pillow's decompression-bomb warning limit")
    path = next(cache.rglob("*.h5"))
    with h5py.File(path) as f:
        paths = set(f["paths"].asstr()[()])
        failed = dict(zip(f["failed_paths"].asstr()[()], f["failed_reasons"].asstr()[()]))
        assert np.isfinite(f["codes"][()]).all()
    assert {p.rsplit("/", 1)[-1] for p in paths if "/odd/" in p} == converted
    assert {p.rsplit("/", 1)[-1]: r for p, r in failed.items()}.keys() == skipped.keys()
    for p, reason in failed.items():
        assert skipped[p.rsplit("/", 1)[-1]] in reason, (p, reason)
    assert len(paths) == 12 + len(converted)
    before = path.read_bytes()
    code, out, err = cli("codes", ["--data", data, "--cache-dir", cache, *CODES], capsys)
    assert code == 0 and "0 of 38 images to compute" in out and len(err) == 1  # known failures: not retried, still listed
    assert path.read_bytes() == before


def _cache_snapshot(cache):
    return {p: p.read_bytes() for p in sorted(cache.rglob("*.h5"))}


@pytest.fixture
def workspace(tmp_path, capsys):
    """A data folder whose codes are cached, a head run on them and a sweep run."""
    data = make_images(tmp_path / "data", n_classes=3, per_class=8)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert cli("codes", ["--data", data, "--cache-dir", cache, *CODES], capsys)[0] == 0
    code_file = next(cache.rglob("*.h5"))
    assert cli("train", ["--codes", code_file, "--head", "logreg", "--runs-dir", runs], capsys)[0] == 0
    assert cli("sweep", ["--codes", code_file, "--heads", "logreg", "--n", "1", "--repeats", "1",
                              "--jobs", "1", "--runs-dir", runs, "--no-progress"], capsys)[0] == 0
    head_run = next(runs.glob("*-logreg"))
    sweep_run = next(runs.glob("*-sweep"))
    return dict(data=data, cache=cache, runs=runs, code_file=code_file, head_run=head_run, sweep_run=sweep_run,
                tmp=tmp_path)


def stopping_cases(w):
    """(name, entry point, arguments, what the one error line must say, setup)."""
    t, data, cache = w["tmp"], w["data"], w["cache"]

    def folder(name, classes):
        root = t / name
        for c, files in classes.items():
            (root / c).mkdir(parents=True, exist_ok=True)
            for f in files:  # .png: a real image; anything else: garbage
                photo().save(root / c / f) if f.endswith(".png") else (root / c / f).write_bytes(b"garbage")
        return root

    def codes(*extra, data_=data):
        return ["--data", data_, "--cache-dir", cache, *CODES, *extra]

    def other_settings():
        other = cache / "data" / "efficientnet_lite0-32-random" / "top_activation-max.h5"
        with h5py.File(w["code_file"], "r") as src, h5py.File(other, "w") as f:  # codes inside (format 1)
            for k in src:
                if k not in ("part_names", "row_part", "row_in_part"):
                    f[k] = src[k][()]
            f.attrs.update({k: v for k, v in src.attrs.items() if k not in ("format_version", "parts")})
            f.attrs["pooling"] = "avg"

    def corrupt_code_set():
        (cache / "data" / "efficientnet_lite0-32-random" / "block7a_project_bn-avg.h5").write_bytes(b"\0" * 64)

    def no_codes_datasets():
        with h5py.File(t / "hollow.h5", "w") as f:
            f["codes"] = np.zeros((2, 2))

    (t / "a-file").write_text("x")
    (t / "notes.txt").write_text("x")
    (t / "empty").mkdir()
    return [
        ("missing data folder", "codes", codes(data_=t / "missing"), "does not exist", None),
        ("data path is a file", "codes", codes(data_=t / "a-file"), "is not a folder", None),
        ("no class folders", "codes", codes(data_=t / "empty"), "has no class sub-folders", None),
        ("one class only", "codes", codes(data_=folder("one", {"a": ["x.png", "y.png"]})), "only one class", None),
        ("classes without images", "codes", codes(data_=folder("txt", {"a": ["x.txt"], "b": ["y.txt"]})),
         "no images", None),
        ("every image unreadable", "codes", codes(data_=folder("bad", {"a": ["x.jpg"], "b": ["y.jpg"]})),
         "could be read", None),
        ("unknown backbone", "codes", codes("--backbone", "alexnet"), "invalid choice: 'alexnet'", None),
        ("unknown option", "codes", codes("--colour", "red"), "unrecognized arguments: --colour", None),
        ("unknown --exclude", "codes", codes("--exclude", "nope"), "--exclude names classes", None),
        ("cache dir is a file", "codes", ["--data", data, *CODES, "--cache-dir", t / "a-file"], "not a folder", None),
        ("code set made with other settings", "codes", codes("--pooling", "max"), "other settings",
         other_settings),
        ("corrupt code set", "codes", codes("--layer", "block7a_project_bn"), "is unreadable", corrupt_code_set),
        ("bad split", "codes", codes("--split", "80/30"), "--split", None),
        ("unknown layer", "codes", codes("--layer", "no_such_layer"), "has no layer", None),
        ("missing weights file", "codes", codes("--weights", t / "nope.h5"), "no such file", None),
        ("weights file of another model", "codes", codes("--weights", t / "notes.txt"), "does not fit", None),
        ("batch size 0", "codes", codes("--batch-size", "0"), "--batch-size", None),
        ("image too small", "codes", codes("--image-size", "8"), "too small", None),
        ("no decoding threads", "codes", codes("--workers", "0"), "--workers", None),
        ("codes file missing", "train", ["--codes", t / "none.h5"], "no cached codes", None),
        ("codes file is garbage", "train", ["--codes", t / "notes.txt"], "not a readable code file", None),
        ("codes file without its datasets", "train", ["--codes", t / "hollow.h5"], "not a readable code file",
         no_codes_datasets),
        ("unknown positive class", "train", ["--codes", w["code_file"], "--positive-class", "dog"],
         "--positive-class", None),
        ("positive class with three classes", "train", ["--codes", w["code_file"], "--positive-class", "class0"],
         "two-class", None),
        ("predict: no such image", "predict", [t / "none.jpg", "--model", w["head_run"]], "no such image", None),
        ("predict: folder without images", "predict", [t / "empty", "--model", w["head_run"]], "no images", None),
        ("predict: no such model", "predict", [data, "--model", t / "none.keras"], "no model file", None),
        ("predict: model is not a zip", "predict", [data, "--model", t / "notes.txt"], "not a model", None),
        ("predict: top-k 0", "predict", [data, "--model", w["head_run"], "--top-k", "0"], "--top-k", None),
        ("export: not a run folder", "export", [t / "empty"], "not a run folder", None),
        ("finetune: a sweep run", "finetune", [w["sweep_run"]], "not a run folder", None),
        ("sweep: N = 0", "sweep", ["--codes", w["code_file"], "--n", "0"], "--n", None),
        ("compare: no runs", "compare", ["--runs-dir", t / "empty"], "no finished runs", None),
    ]


@pytest.mark.slow
def test_inputs_that_stop_a_run_give_one_line_and_keep_the_cache(workspace, capsys):
    cases = stopping_cases(workspace)
    assert len(cases) >= 30
    for name, module, argv, message, setup in cases:
        if setup:
            setup()
        before = _cache_snapshot(workspace["cache"])
        code, out, err = cli(module, argv, capsys)
        assert code == 2, (name, out, err)
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (name, err)
        assert _cache_snapshot(workspace["cache"]) == before, name
    runs = json.dumps(sorted(p.name for p in workspace["runs"].iterdir()))
    assert len(json.loads(runs)) == 2  # no run folder was left behind by a refused run
