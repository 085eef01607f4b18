"""The audit's cost and what it finds.

    python benchmarks/bench_audit.py [--images 100000] [--dim 1280] [--codes CACHED.h5] [--work /tmp/bench_audit]

1. ``cnn-codes audit`` on ``--images`` synthetic codes of ``--dim`` values (100 classes): the
   whole command's wall time and peak memory (RSS of the process, measured by a parent that has
   no other child), and the time of the raw similarity products (codes x codes^T in the same
   chunks, nothing else) as the yardstick.
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


def synthetic(path: Path, n: int, dim: int, n_classes: int = 100, seed: int = 0) -> Path:
    import h5py

    from pipeline.data import TEST, TRAIN, VAL
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centres = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    with h5py.File(path, "w") as f:
        codes = f.create_dataset("codes", (n, dim), np.float32)
        for s in range(0, n, 10000):
            e = min(s + 10000, n)
            codes[s:e] = np.maximum(centres[y[s:e]] + rng.normal(0, 1.5, (e - s, dim)), 0)  # ReLU-like, as real codes
        f["labels"] = y
        f["split"] = rng.choice([TRAIN, VAL, TEST], n, p=[0.7, 0.15, 0.15]).astype(np.int8)
        f.create_dataset("paths", data=[f"c{c}/{i}.jpg" for i, c in enumerate(y)], dtype=h5py.string_dtype())
        f.create_dataset("class_names", data=[f"c{c}" for c in range(n_classes)], dtype=h5py.string_dtype())
        f.attrs.update(backbone="synthetic", layer="top", pooling="avg", image_size=224, data_root="/nowhere")
    return path


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
    seconds, peak, _ = audited(path, work / "runs-synthetic", "--gallery", "0")
    raw = raw_products(path)
    print(f"synthetic: {a.images} codes of {a.dim} values: audit {seconds:.1f} s, peak memory {peak:.2f} GB; "
          f"similarity products alone {raw:.1f} s ({seconds / raw:.1f}x); codes {a.images * a.dim * 4 / 1e9:.2f} GB")

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
