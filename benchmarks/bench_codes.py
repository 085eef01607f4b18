#!/usr/bin/env python
"""Stage-1 throughput and memory, stage-2 head seconds, from one run on this machine.

Prints: end-to-end stage-1 images/s (decode + resize + forward + cache), raw forward images/s of
the same compiled model on in-memory tensors, their ratio, peak RSS of stage 1 at growing image
counts (each in a fresh process), and the training seconds of each head on the resulting codes.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CALTECH, ROOT


def subset(src: Path, dst: Path, per_class: int | None, exclude) -> Path:
    """A folder of symlinks to the first ``per_class`` images of each class (all if None)."""
    for c in sorted(p for p in src.iterdir() if p.is_dir() and p.name not in exclude):
        (dst / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:per_class]:
            (dst / c.name / f.name).symlink_to(f)
    return dst


def child(a):
    """One stage-1 run in this process; prints JSON figures."""
    import numpy as np
    from pipeline.backbones import build_feature_model, get_backbone
    from pipeline.codes import Mapper, generate_codes
    from pipeline.dataset import parse_split, scan
    from pipeline.errors import quiet_tensorflow

    quiet_tensorflow()

    n = len(scan(a.data))
    stats = {}
    t0 = time.perf_counter()
    files = generate_codes(a.data, backbone=a.backbone, poolings=["avg"], cache_dir=a.cache_dir, batch_size=a.batch_size,
                           split=parse_split(a.split), progress=False, log=lambda *x: None, stats=stats)
    e2e = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bb = get_backbone(a.backbone)
    model, _ = build_feature_model(bb, [(bb.default_layer, "avg")])
    mapper = Mapper(model, a.batch_size)
    x = np.random.default_rng(0).integers(0, 256, (a.batch_size, bb.input_size, bb.input_size, 3), dtype=np.uint8)
    mapper(x)
    reps = max(3, min(40, n // a.batch_size))
    t0 = time.perf_counter()
    for _ in range(reps):
        mapper(x)
    raw = reps * a.batch_size / (time.perf_counter() - t0)
    print(json.dumps({"n": n, "e2e_s": e2e, "e2e_ips": n / e2e, "stream_ips": stats["images"] / stats["seconds"],
                      "raw_ips": raw, "rss_mb": rss_mb,
                      "codes": str(files[0])}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(CALTECH), help="image folder (default: Caltech-101 in ../shared)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--per-class", nargs="+", default=["5", "20", "all"],
                   help="image caps per class for the memory-growth runs")
    p.add_argument("--exclude", nargs="*", default=["BACKGROUND_Google"])
    p.add_argument("--split", default="70/15/15")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    if not Path(a.data).is_dir():
        sys.exit(f"error: no data at {a.data}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cap in a.per_class:
            data = subset(Path(a.data), Path(tmp) / f"data{cap}" / "caltech", None if cap == "all" else int(cap),
                          set(a.exclude))
            out = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--backbone", a.backbone,
                                  "--batch-size", str(a.batch_size), "--split", a.split,
                                  "--cache-dir", str(Path(tmp) / f"cache{cap}")],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(out.stderr)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"stage 1 {a.backbone}, {r['n']:5d} images: streaming (decode+forward+write) "
                  f"{r['stream_ips']:6.1f} img/s, raw forward {r['raw_ips']:6.1f} img/s, "
                  f"ratio {r['stream_ips'] / r['raw_ips']:.2f}; whole call incl. model build and HDF5 assembly "
                  f"{r['e2e_s']:.1f} s = {r['e2e_ips']:.1f} img/s; peak RSS {r['rss_mb']:.0f} MB", flush=True)
        from pipeline.errors import quiet_tensorflow
        quiet_tensorflow()
        from pipeline.train import train_on_codes
        for head in ("softmax", "mlp", "logreg"):
            t0 = time.perf_counter()
            _, m = train_on_codes(rows[-1]["codes"], head=head, runs_dir=Path(tmp) / "runs", log=lambda *x: None)
            print(f"stage 2 {head:8s} on {rows[-1]['n']} pooled codes: {time.perf_counter() - t0:5.1f} s "
                  f"(incl. evaluation and report), test accuracy {m['accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
