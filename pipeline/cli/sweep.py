"""Training-size sweep on cached codes: accuracy vs. training images per class, charted. Each
code set (--codes, or the product of --backbone/--layer/--pooling) gives one curve per head.
Writes sweep.csv (one row per run), summary.json (mean, std and per-repeat figures) and
sweep.png in a run folder, and prints a table of the means."""
from pipeline.cli import add_code_options, add_common_options, code_paths, default
from pipeline.heads import HEADS
from pipeline.runs import DEFAULT_NS, sweep

HELP = "accuracy vs. training images per class, charted"


def add_arguments(p):
    s = lambda name: default(sweep, name)
    add_code_options(p, many=True)
    p.add_argument("--heads", nargs="+", default=list(s("heads")), choices=list(HEADS), help="heads to train")
    p.add_argument("--n", nargs="*", default=None,
                   help=f"training images per class; 'all' for all (default: {' '.join(DEFAULT_NS)}, "
                        "without the values no class reaches)")
    p.add_argument("--repeats", type=int, default=s("repeats"), help="draws per N (different images and head seeds)")
    p.add_argument("--jobs", type=int, default=s("n_jobs"), help="worker processes (-1: one per CPU core)")
    add_common_options(p, seed="the draws and the heads (the base seed)")


def run(a):
    sweep(code_paths(a), heads=a.heads, ns=a.n, repeats=a.repeats, seed=a.seed, n_jobs=a.jobs,
              runs_dir=a.runs_dir, progress=not a.no_progress)
    return 0
