#!/usr/bin/env python
"""Caltech-101 with the default backbone: head on cached codes vs. fine-tuned vs. from scratch.

All three use the same stored 70/15/15 split (101 classes, BACKGROUND_Google excluded). Prints
one table with test accuracy and the minutes each took on this machine (stage 1 included for
the transfer rows where it was computed in this run).
"""
import argparse
import json
import sys
import time
from pathlib import Path

from common import CALTECH, ROOT


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(CALTECH))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--head", default="softmax")
    p.add_argument("--unfreeze-blocks", type=int, default=2)
    p.add_argument("--augment-epochs", type=int, default=0, help="also fine-tune with augmentation for this many epochs")
    p.add_argument("--scratch-size", type=int, default=128)
    p.add_argument("--cache-dir", default=str(ROOT / "cache"))
    p.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "out" / "transfer"))
    a = p.parse_args()
    if not Path(a.data).is_dir():
        sys.exit(f"error: no data at {a.data}")
    from pipeline._tf import quiet_tensorflow
    from pipeline.codes import generate_codes
    from pipeline.runs import finetune, scratch, train

    quiet_tensorflow()
    rows = []
    t0 = time.perf_counter()
    codes = generate_codes(a.data, backbone=a.backbone, cache_dir=a.cache_dir, exclude=["BACKGROUND_Google"], progress=False)[0]
    stage1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = train(codes, a.head, runs_dir=a.runs_dir)
    head_run, m = run.path, run.metrics
    rows.append(("head on cached codes", m, time.perf_counter() - t0, head_run))
    t0 = time.perf_counter()
    run = finetune(head_run, unfreeze_blocks=a.unfreeze_blocks, cache_dir=a.cache_dir, runs_dir=a.runs_dir, progress=False)
    run, m = run.path, run.metrics
    rows.append((f"fine-tuned, last {a.unfreeze_blocks} blocks + top, fast path", m, time.perf_counter() - t0, run))
    if a.augment_epochs:
        t0 = time.perf_counter()
        run = finetune(head_run, unfreeze_blocks=a.unfreeze_blocks, epochs=a.augment_epochs, augment=True, cache_dir=a.cache_dir, runs_dir=a.runs_dir, progress=False)
        run, m = run.path, run.metrics
        rows.append((f"fine-tuned with augmentation ({a.augment_epochs} epochs max)", m, time.perf_counter() - t0, run))
    t0 = time.perf_counter()
    run = scratch(codes, image_size=a.scratch_size, runs_dir=a.runs_dir, progress=False)
    run, m = run.path, run.metrics
    rows.append((f"from scratch, {a.scratch_size} px", m, time.perf_counter() - t0, run))
    print(f"stage 1 ({a.backbone} codes, cached; 0 if already there): {stage1 / 60:.1f} min")
    print("| model | test accuracy | top-5 | mean per-class | minutes (this step) |")
    print("|---|---|---|---|---|")
    for name, m, sec, run in rows:
        print(f"| {name} | {100 * m['accuracy']:.2f}% | {100 * m['top5_accuracy']:.2f}% | "
              f"{100 * m['mean_per_class_accuracy']:.2f}% | {sec / 60:.1f} |", flush=True)
    (Path(a.runs_dir) / "bench_transfer.json").write_text(json.dumps(
        [{"model": n, "accuracy": m["accuracy"], "top5": m["top5_accuracy"], "minutes": s / 60, "run": str(r)}
         for n, m, s, r in rows], indent=2))


if __name__ == "__main__":
    main()
