#!/usr/bin/env python
"""Training-size sweep on cached codes: accuracy vs. training images per class, charted."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    from pipeline.cli import add_code_options, code_paths
    from pipeline.heads import HEADS
    from pipeline.sweep import DEFAULT_NS

    p = argparse.ArgumentParser(
        description=__doc__ + " Each code set (--codes, or the product of --backbone/--layer/--pooling) "
        "gives one curve per head. Writes sweep.csv (one row per run), summary.json (mean, std and "
        "per-repeat figures) and sweep.png in a run folder, and prints a table of the means.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_code_options(p, many=True)
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS), help="heads to train")
    p.add_argument("--n", nargs="*", default=None,
                   help=f"training images per class; 'all' for all (default: {' '.join(DEFAULT_NS)}, "
                        "without the values no class reaches)")
    p.add_argument("--repeats", type=int, default=5, help="draws per N (different images and head seeds)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the draws and heads")
    p.add_argument("--jobs", type=int, default=-1, help="worker processes (-1: one per CPU core)")
    p.add_argument("--runs-dir", default="runs", help="where the run folder goes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    quiet_tensorflow()
    from pipeline.sweep import run_sweep

    paths = code_paths(a)
    run_sweep(paths, a.heads, a.n, a.repeats, a.seed, a.jobs, a.runs_dir, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
