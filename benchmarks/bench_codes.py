#!/usr/bin/env python
"""Stage-1 throughput and memory, stage-2 head seconds, from one run on this machine.

Default: end-to-end stage-1 images/s (decode + resize + forward + cache), raw forward images/s of
the same mapper on in-memory tensors, their ratio, peak RSS of stage 1 at growing image counts
(each in a fresh process), and the training seconds of each head on the resulting codes.

--compare-runtimes: all images, one fresh process each for TensorFlow, OpenVINO FP32 and
OpenVINO BF16: raw forward and stage 1 end to end, the ratios, and the test accuracy of
logistic regression on the FP32 and BF16 codes (70/30 split).
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

    from pipeline._tf import quiet_tensorflow
    from pipeline.backbones import build_feature_model, get_backbone
    from pipeline.codes import choose_runtime, generate_codes
    from pipeline.codes._runtimes import make_mapper
    from pipeline.data import parse_split, scan

    quiet_tensorflow()

    n = len(scan(a.data))
    stats = {}
    t0 = time.perf_counter()
    files = generate_codes(a.data, backbone=a.backbone, poolings=["avg"], cache_dir=a.cache_dir,
                           batch_size=a.batch_size, split=parse_split(a.split), runtime=a.runtime,
                           precision=a.precision, progress=False, stats=stats)
    e2e = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The raw figure: the same kind of mapper on in-memory tensors, batches in flight as in stage 1.
    bb = get_backbone(a.backbone)
    model, _ = build_feature_model(bb, [(bb.default_layer, "avg")])
    runtime = choose_runtime(a.runtime, a.precision)
    mapper = make_mapper(model, runtime=runtime, batch_size=a.batch_size, image_size=bb.input_size,
                         model_name=f"{bb.name} {bb.default_layer}/avg", precision=a.precision)
    x = np.random.default_rng(0).integers(0, 256, (a.batch_size, bb.input_size, bb.input_size, 3), dtype=np.uint8)
    mapper(x)
    reps = max(4, min(60, n // a.batch_size))
    t0 = time.perf_counter()
    for _ in mapper.map_batches([x] * reps):
        pass
    raw = reps * a.batch_size / (time.perf_counter() - t0)
    print(json.dumps({"n": n, "e2e_s": e2e, "e2e_ips": n / e2e, "stream_ips": stats["images"] / stats["seconds"],
                      "raw_ips": raw, "rss_mb": rss_mb, "runtime": mapper.description,
                      "codes": str(files[0])}))


def run_child(a, data, cache, runtime="auto", precision="fp32", split=None):
    out = subprocess.run([sys.executable, __file__, "--child", "--data", str(data), "--backbone", a.backbone,
                          "--batch-size", str(a.batch_size), "--split", split or a.split, "--cache-dir", str(cache),
                          "--runtime", runtime, "--precision", precision],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_runtimes(a, data, tmp):
    """TensorFlow, OpenVINO FP32 and BF16 on all images, one fresh process each; then the
    accuracy of logistic regression on the FP32 and BF16 codes."""
    rows = {}
    for name, runtime, precision in (("tensorflow", "tensorflow", "fp32"), ("openvino fp32", "openvino", "fp32"),
                                     ("openvino bf16", "openvino", "bf16")):
        rows[name] = r = run_child(a, data, Path(tmp) / f"cache-{runtime}-{precision}", runtime, precision, "70/30")
        print(f"{name:14s} {r['n']} images: raw forward {r['raw_ips']:6.1f} img/s, stage 1 {r['stream_ips']:6.1f} img/s "
              f"(ratio to its raw {r['stream_ips'] / r['raw_ips']:.2f}); whole call {r['e2e_s']:.1f} s; "
              f"peak RSS {r['rss_mb']:.0f} MB  [{r['runtime']}]", flush=True)
    tf = rows["tensorflow"]
    for name in ("openvino fp32", "openvino bf16"):
        print(f"{name} vs tensorflow: raw {rows[name]['raw_ips'] / tf['raw_ips']:.2f}x, "
              f"stage 1 {rows[name]['stream_ips'] / tf['stream_ips']:.2f}x", flush=True)
    import numpy as np

    from pipeline._tf import quiet_tensorflow
    from pipeline.codes import CodeSet
    quiet_tensorflow()
    from pipeline.runs import train
    a32 = CodeSet.load(rows["openvino fp32"]["codes"])
    t32 = CodeSet.load(rows["tensorflow"]["codes"])
    print(f"codes, OpenVINO FP32 vs TensorFlow: max abs diff {np.abs(a32.X - t32.X).max():.2e}")
    b16 = CodeSet.load(rows["openvino bf16"]["codes"])
    print(f"codes, OpenVINO BF16 vs TensorFlow: max abs diff {np.abs(b16.X - t32.X).max():.2e} "
          f"(largest code value {np.abs(t32.X).max():.2f})")
    for name in ("tensorflow", "openvino fp32", "openvino bf16"):
        m = train(rows[name]['codes'], 'logreg', runs_dir=Path(tmp) / 'runs').metrics
        print(f"logreg on {name} codes (70/30): test accuracy {m['accuracy']:.4f}, mean per-class "
              f"{m['mean_per_class_accuracy']:.4f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=str(CALTECH), help="image folder (default: Caltech-101 in ../shared)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--per-class", nargs="+", default=["5", "20", "all"],
                   help="image caps per class for the memory-growth runs")
    p.add_argument("--exclude", nargs="*", default=["BACKGROUND_Google"])
    p.add_argument("--split", default="70/15/15")
    p.add_argument("--runtime", default="auto", help="runtime of stage 1 for the memory-growth runs")
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--compare-runtimes", action="store_true",
                   help="TensorFlow vs OpenVINO FP32 vs BF16 on all images instead of the memory-growth runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:  # ends without interpreter teardown (OpenVINO's threads can abort it)
        from pipeline.cli.main import exit_without_teardown
        return exit_without_teardown(lambda: child(a))
    if not Path(a.data).is_dir():
        sys.exit(f"error: no data at {a.data}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.compare_runtimes:
            return compare_runtimes(a, subset(Path(a.data), Path(tmp) / "all" / "caltech", None, set(a.exclude)), tmp)
        for cap in a.per_class:
            data = subset(Path(a.data), Path(tmp) / f"data{cap}" / "caltech", None if cap == "all" else int(cap),
                          set(a.exclude))
            rows.append(run_child(a, data, Path(tmp) / f"cache{cap}", a.runtime))
            r = rows[-1]
            print(f"stage 1 {a.backbone} [{r['runtime']}], {r['n']:5d} images: streaming (decode+forward+write) "
                  f"{r['stream_ips']:6.1f} img/s, raw forward {r['raw_ips']:6.1f} img/s, "
                  f"ratio {r['stream_ips'] / r['raw_ips']:.2f}; whole call incl. model build and HDF5 assembly "
                  f"{r['e2e_s']:.1f} s = {r['e2e_ips']:.1f} img/s; peak RSS {r['rss_mb']:.0f} MB", flush=True)
        from pipeline._tf import quiet_tensorflow
        quiet_tensorflow()
        from pipeline.runs import train
        for head in ("softmax", "mlp", "logreg"):
            t0 = time.perf_counter()
            m = train(rows[-1]['codes'], head, runs_dir=Path(tmp) / 'runs').metrics
            print(f"stage 2 {head:8s} on {rows[-1]['n']} pooled codes: {time.perf_counter() - t0:5.1f} s "
                  f"(incl. evaluation and report), test accuracy {m['accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
