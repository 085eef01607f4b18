#!/usr/bin/env python
"""Training-size sweep on cached codes: accuracy vs. training images per class, charted."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    from pipeline.backbones import DEFAULT_BACKBONE, POOLINGS
    from pipeline.heads import HEADS
    from pipeline.sweep import DEFAULT_NS

    p = argparse.ArgumentParser(
        description=__doc__ + " Each code set (--codes, or the product of --backbone/--layer/--pooling) "
        "gives one curve per head. Writes sweep.csv (one row per run), summary.json (mean, std and "
        "per-repeat figures) and sweep.png in a run folder, and prints a table of the means.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--codes", nargs="+", default=None, help="code files (.h5); overrides the options below")
    p.add_argument("--data", default="examples/caltech5", help="image folder the codes were made from")
    p.add_argument("--backbone", nargs="+", default=[DEFAULT_BACKBONE], help="backbone(s) of the code sets")
    p.add_argument("--layer", nargs="+", default=[None], help="layer(s); default: each backbone's final conv block")
    p.add_argument("--pooling", nargs="+", default=["avg"], choices=POOLINGS, help="pooling(s)")
    p.add_argument("--weights", default="imagenet", help="weights the codes were made with")
    p.add_argument("--image-size", type=int, default=None, help="input size the codes were made with")
    p.add_argument("--cache-dir", default="cache", help="where code files are")
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS), help="heads to train")
    p.add_argument("--n", nargs="*", default=list(DEFAULT_NS), help="training images per class; 'all' for all")
    p.add_argument("--repeats", type=int, default=5, help="draws per N (different images and head seeds)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the draws and heads")
    p.add_argument("--jobs", type=int, default=-1, help="worker processes (-1: one per CPU core)")
    p.add_argument("--runs-dir", default="runs", help="where the run folder goes")
    a = p.parse_args(argv)

    quiet_tensorflow()
    from pathlib import Path

    from pipeline.codes import code_spec, codes_command
    from pipeline.errors import UserError
    from pipeline.sweep import run_sweep

    paths = a.codes
    if paths is None:
        paths = []
        for bb in a.backbone:
            for layer in a.layer:
                for pooling in a.pooling:
                    spec = code_spec(a.data, bb, layer, pooling, a.weights, a.image_size)
                    path = spec.path(a.cache_dir)
                    if not Path(path).exists():
                        raise UserError(f"no cached codes for {bb} {spec.layer}/{pooling} at {path}; "
                                        f"make them with: {codes_command(spec, a.data)}")
                    paths.append(path)
    run_sweep(paths, a.heads, a.n, a.repeats, a.seed, a.jobs, a.runs_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
