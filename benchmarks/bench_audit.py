"""The audit's cost and what it finds, exact against approximate.

    python benchmarks/bench_audit.py [--images 100000] [--dim 1280] [--codes CACHED.h5] [--work /tmp/bench_audit]

1. ``cnn-codes audit`` on ``--images`` synthetic codes of ``--dim`` values (100 classes, with
   planted near-copies within classes, copies across classes and look-alikes), once with
   ``--search exact`` and once with ``--search approximate``: each whole command's wall time and
   peak memory (RSS of the process, measured by a parent that has no other child); the pairs each
   finds, and the share of the exact search's pairs the approximate one finds (recall), per kind
   and tier; the overlap of their label errors and outliers. The time of the raw similarity
   products (codes x codes^T in the exact search's chunks, nothing else) as the yardstick.
2. With ``--codes`` (e.g. Lite0 codes of the whole of Caltech-101): the audit with its defaults,
   its counts, and how many of the 435 Faces/Faces_easy photographs (same file names) it pairs.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT

CNN_CODES = str(Path(sys.executable).with_name("cnn-codes"))
PROBE = ("import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
         "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def audited(codes: Path, runs: Path, *extra) -> tuple[float, float, Path]:
    """Run the audit command; (seconds, peak GB, run folder)."""
    out = subprocess.run([sys.executable, "-c", PROBE, CNN_CODES, "audit", "--codes", str(codes), "--runs-dir",
                          str(runs), "--no-progress", *extra], capture_output=True, text=True, check=True)
    code, seconds, peak_kb = out.stdout.split()[-3:]
    assert code == "0", out.stderr
    return float(seconds), int(peak_kb) * 1024 / 1e9, sorted(runs.iterdir())[-1]


def synthetic(path: Path, n: int, dim: int, n_classes: int = 100, seed: int = 0, planted: float = 0.01) -> Path:
    """A minimal code set of ``n`` ReLU-like codes around 100 class centres; a ``planted`` share of
    them made from another image: half near-copies within its class (cosine about 0.99), a
    quarter copies under another class, a quarter look-alikes of another class (about 0.9)."""
    import h5py

    from pipeline.data import TEST, TRAIN, VAL
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    m = int(planted * n)
    made, source = rng.choice(n, (2, m), replace=False)  # image made[i] from image source[i]
    kinds = rng.choice(3, m, p=[0.5, 0.25, 0.25])  # 0 near-copy within, 1 copy across, 2 look-alike across
    y[made[kinds == 0]] = y[source[kinds == 0]]
    y[made[kinds > 0]] = (y[source[kinds > 0]] + 1 + rng.integers(0, n_classes - 1, int((kinds > 0).sum()))) % n_classes
    rows = lambda idx: np.maximum(centres[y[idx]] + rng.normal(0, 1.5, (len(idx), dim)), 0)
    with h5py.File(path, "w") as f:
        codes = f.create_dataset("codes", (n, dim), np.float32)
        for s in range(0, n, 10000):
            idx = np.arange(s, min(s + 10000, n))
            codes[s:s + len(idx)] = rows(idx)
        base = codes[np.sort(source)][np.argsort(np.argsort(source))]
        noise = np.where(kinds[:, None] == 2, 0.7, 0.15).astype(np.float32)
        mixed = np.maximum(np.where(kinds[:, None] == 2, 0.8 * base + 0.2 * rows(made), base)
                           + rng.normal(0, 1, base.shape) * noise, 0)
        order = np.argsort(made)
        codes[made[order]] = mixed[order]
        f["labels"] = y
        f["split"] = rng.choice([TRAIN, VAL, TEST], n, p=[0.7, 0.15, 0.15]).astype(np.int8)
        f.create_dataset("paths", data=[f"c{c}/{i}.jpg" for i, c in enumerate(y)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=[f"c{c}" for c in range(n_classes)], dtype=h5py.string_dtype())
    return path


def findings(run: Path) -> dict:
    """Pairs (by kind and tier), label errors and outliers of an audit's run folder, as sets."""
    def rows(name):
        with open(run / name) as fh:
            return list(csv.DictReader(fh))
    pairs = {}
    for r in rows("duplicates.csv"):
        pairs.setdefault(f"{r['kind']} ({r['tier']})", set()).add((r["path_a"], r["path_b"]))
    return {"pairs": pairs, "issues": {r["path"] for r in rows("label_issues.csv")},
            "outliers": {r["path"] for r in rows("outliers.csv")},
            "summary": json.loads((run / "audit.json").read_text())}


def exact_against_approximate(codes: Path, work: Path) -> dict:
    """Both searches on one code set: time, peak memory, and what the approximate one finds of
    what the exact one finds. Prints a table; returns the figures."""
    runs = {}
    for search in ("exact", "approximate"):
        seconds, peak, run = audited(codes, work / f"runs-{search}", "--gallery", "0", "--search", search)
        runs[search] = (seconds, peak, findings(run))
    (te, pe, ex), (ta, pa, ap) = runs["exact"], runs["approximate"]
    print(f"{codes.name}: {ex['summary']['images']} codes")
    print("| search | wall s | peak GB | pairs | label errors | outliers |")
    print("|---|---|---|---|---|---|")
    for name, (t, peak, f) in runs.items():
        print(f"| {name} | {t:.1f} | {peak:.2f} | {sum(map(len, f['pairs'].values()))} | {len(f['issues'])} | "
              f"{len(f['outliers'])} |")
    print(f"approximate: {ap['summary']['neighbours']}")
    print("| pairs (exact search) | exact | approximate finds of them | recall | approximate only |")
    print("|---|---|---|---|---|")
    every_e = set().union(*ex["pairs"].values()) if ex["pairs"] else set()
    every_a = set().union(*ap["pairs"].values()) if ap["pairs"] else set()
    recall = {}
    for kind in sorted(ex["pairs"]):
        e = ex["pairs"][kind]
        recall[kind] = len(e & every_a) / len(e)
        print(f"| {kind} | {len(e)} | {len(e & every_a)} | {100 * recall[kind]:.2f}% | - |")
    recall["all"] = len(every_e & every_a) / max(1, len(every_e))
    print(f"| all | {len(every_e)} | {len(every_e & every_a)} | {100 * recall['all']:.2f}% | {len(every_a - every_e)} |")
    # Where an image has many neighbours about equally close (copies of copies), which of them is its
    # pair is a toss-up; whether the image is reported at all is not: the images in pairs, by kind.
    images = lambda pairs: {p for pair in pairs for p in pair}
    print("| images in pairs (exact search) | exact | approximate reports of them | recall |")
    print("|---|---|---|---|")
    for kind in ("within class", "across classes"):
        e = images(set().union(*(v for k, v in ex["pairs"].items() if k.startswith(kind))))
        a = images(set().union(*(v for k, v in ap["pairs"].items() if k.startswith(kind))))
        recall[f"images {kind}"] = len(e & a) / max(1, len(e))
        print(f"| {kind} | {len(e)} | {len(e & a)} | {100 * recall[f'images {kind}']:.2f}% |")
    overlap = lambda k: len(ex[k] & ap[k]) / max(1, len(ex[k]))
    print(f"label errors in common: {100 * overlap('issues'):.1f}% of the exact run's; "
          f"outliers in common: {100 * overlap('outliers'):.1f}%; time {te / ta:.1f}x less, peak memory "
          f"{pe:.2f} -> {pa:.2f} GB")
    return {"exact_seconds": te, "approximate_seconds": ta, "exact_peak_gb": pe, "approximate_peak_gb": pa,
            "recall": recall, "issues_in_common": overlap("issues"), "outliers_in_common": overlap("outliers")}


def raw_products(path: Path) -> float:
    """Seconds of the similarity products alone, in the audit's chunks."""
    from pipeline.codes import CodeSet
    from pipeline.quality._audit import CHUNK_BYTES, unit_rows

    Z = unit_rows(CodeSet(path).X)
    n = len(Z)
    rows = max(1, CHUNK_BYTES // (13 * n))
    t = time.perf_counter()
    for s in range(0, n, rows):
        Z[s:s + rows] @ Z.T
    return time.perf_counter() - t


def main():
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--codes", default=None, help="a real code set to audit with the defaults")
    p.add_argument("--work", default="/tmp/bench_audit")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    path = synthetic(work / f"synthetic-{a.images}x{a.dim}.h5", a.images, a.dim)
    exact_against_approximate(path, work)
    raw = raw_products(path)
    print(f"similarity products alone (the exact search's floor): {raw:.1f} s; "
          f"codes {a.images * a.dim * 4 / 1e9:.2f} GB")

    if a.codes:
        seconds, peak, run = audited(Path(a.codes), work / "runs-real")
        s = json.loads((run / "audit.json").read_text())
        with open(run / "duplicates.csv") as fh:
            rows = list(csv.DictReader(fh))
        faces = [r for r in rows if {r["class_a"], r["class_b"]} == {"Faces", "Faces_easy"}]
        same = {r["path_a"].split("/")[1] for r in faces if r["path_a"].split("/")[1] == r["path_b"].split("/")[1]}
        print(f"{a.codes}: {s['images']} images, audit {seconds:.1f} s, peak {peak:.2f} GB")
        print(f"  near-duplicates: {s['duplicates']}; class pairs: "
              + ", ".join(f"{'/'.join(c['classes'])} {c['pairs']}" for c in s["class_pairs"]))
        print(f"  Faces/Faces_easy pairs: {len(faces)}, of them the same photograph (same file name): {len(same)} of 435")
        print(f"  likely label errors: {s['label_issues']} (out-of-fold accuracy {s['out_of_fold_accuracy']:.4f}); "
              f"outliers: {s['outliers']} -> {run}")


if __name__ == "__main__":
    main()
