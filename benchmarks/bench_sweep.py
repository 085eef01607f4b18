"""The default training-size sweep against stage 1 for the same codes, timed in one run.

    python benchmarks/bench_sweep.py [--data ../shared/data/caltech101/101_ObjectCategories] [--out DIR]

Stage 1 (``cnn-codes codes``, EfficientNet-Lite0, TensorFlow runtime, into an empty cache under
``--out``), then the default sweep (softmax, mlp, logreg; N = 1 2 5 10 15 20 30 all; 5 repeats) on the
codes it made: both as whole commands, wall time including start-up. Prints both times, their
ratio (the target: the sweep within 1.2x of stage 1) and the sweep's table.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import CALTECH, ROOT


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=CALTECH)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "sweep")
    args = p.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: {args.data} is not a folder of class folders")
    shutil.rmtree(args.out, ignore_errors=True)
    cache, runs = args.out / "cache", args.out / "runs"
    tool = [sys.executable, "-c", "from pipeline.cli.main import console; console()"]
    stage1 = timed([*tool, "codes", "--data", str(args.data), "--cache", str(cache), "--runtime", "tensorflow",
                    "--no-progress"])
    (codes,) = cache.glob("*/*/*.h5")
    sweep = timed([*tool, "sweep", "--codes", str(codes), "--runs-dir", str(runs), "--no-progress"])
    print(f"stage 1 (TensorFlow runtime): {stage1:.1f} s; default sweep: {sweep:.1f} s; "
          f"sweep / stage 1 = {sweep / stage1:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
