"""One table comparing runs: heads on codes, fine-tuned models and from-scratch baselines."""
from pipeline.runs import compare_table

HELP = "one table comparing runs"

NEEDS_TENSORFLOW = False


def add_arguments(p):
    p.add_argument("runs", nargs="*", default=None, help="run folders (default: every run under --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where to look for run folders")


def run(a):
    print(compare_table(a.runs or None, runs_dir=a.runs_dir))
    return 0
