#!/usr/bin/env python
"""Caltech-101 figures for the EfficientNet-Lite backbones (the published CNN-codes protocol).

101 object classes (BACKGROUND_Google excluded), per-class 70/30 train/test split with a fixed
seed. For each backbone: stage-1 images/s on this machine, then test accuracy and training
seconds of each head on pooled (avg) and flattened codes of the final conv block.
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
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    p.add_argument("--poolings", nargs="+", default=["avg", "flatten"])
    p.add_argument("--heads", nargs="+", default=["softmax", "logreg"])
    p.add_argument("--flatten-heads", nargs="+", default=["softmax"],
                   help="heads for flattened codes (logreg on 60k-100k values takes many minutes)")
    p.add_argument("--split", default="70/30")
    p.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "out" / "cache"))
    p.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "out" / "runs"))
    a = p.parse_args()
    if not Path(a.data).is_dir():
        sys.exit(f"error: no data at {a.data}")
    from pipeline._tf import quiet_tensorflow
    from pipeline.codes import generate_codes
    from pipeline.data import parse_split
    from pipeline.runs import train

    quiet_tensorflow()
    results = []
    for bb in a.backbones:
        stats = {}
        t0 = time.perf_counter()
        files = generate_codes(a.data, backbone=bb, poolings=a.poolings, cache_dir=a.cache_dir, exclude=["BACKGROUND_Google"],
                               split=parse_split(a.split), progress=False, stats=stats)
        wall = time.perf_counter() - t0
        ips = stats["images"] / stats["seconds"] if stats else float("nan")
        print(f"{bb}: stage 1 {stats.get('images', 0)} images at {ips:.1f} img/s ({wall:.0f} s incl. start-up)",
              flush=True)
        for pooling, path in zip(a.poolings, files):
            for head in (a.flatten_heads if pooling == "flatten" else a.heads):
                run = train(path, head, runs_dir=a.runs_dir)
                run_dir, m = run.path, run.metrics
                rec = json.loads((run_dir / "record.json").read_text())
                dim = json.loads(rec["code_attrs"]["code_shape"])
                results.append(dict(backbone=bb, pooling=pooling, values=int(__import__("numpy").prod(dim) if pooling == "flatten" else dim[-1]),
                                    head=head, accuracy=m["accuracy"], top5=m["top5_accuracy"],
                                    mean_per_class=m["mean_per_class_accuracy"], train_seconds=rec["train_seconds"],
                                    stage1_ips=ips))
                r = results[-1]
                print(f"| {bb} | {pooling} ({r['values']:,}) | {head} | {100 * r['accuracy']:.2f}% | "
                      f"{100 * r['mean_per_class']:.2f}% | {r['train_seconds']:.1f} s | {ips:.0f} img/s |", flush=True)
    out = Path(a.runs_dir) / "bench_caltech.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
