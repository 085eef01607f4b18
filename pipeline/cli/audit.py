"""Audit a data set from its cached codes: near-duplicate pairs within a class, across classes and
across the train/validation/test split (leakage), by cosine similarity of the codes (nearest
neighbours: exact, in chunks, up to 50,000 images; above, approximate on the codes' 256 leading
principal directions through a faiss index, the pairs found measured again on the codes); likely label errors (out-of-fold probabilities and confident
learning); outliers. Writes duplicates.csv, label_issues.csv, outliers.csv, audit.json and a
report.html gallery of each finding in a new run folder. The code set is named by --codes or found
from the options that made it with `cnn-codes codes`."""
from pipeline.cli import add_code_options, add_common_options, code_paths, default, finite_float
from pipeline.quality import EXACT_LIMIT, SEARCHES, audit

HELP = "find near-duplicates, leakage, likely label errors and outliers in a data set from its codes"

NEEDS_TENSORFLOW = False


def add_arguments(p):
    add_code_options(p, join=True)
    d = lambda name: default(audit, name)
    p.add_argument("--threshold", type=finite_float, default=d("threshold"),
                   help="cosine similarity from which two images of one class are near-duplicates")
    p.add_argument("--cross-threshold", type=finite_float, default=d("cross_threshold"),
                   help="cosine similarity from which an image and its nearest image of another class are reported")
    p.add_argument("--neighbours", type=int, default=d("neighbours"), help="nearest neighbours looked at per image")
    p.add_argument("--folds", type=int, default=d("folds"), help="cross-validation folds of the label model")
    p.add_argument("--outlier-fraction", type=finite_float, default=d("outlier_fraction"),
                   help="fraction of the images reported as outliers")
    p.add_argument("--search", choices=SEARCHES, default=d("search"),
                   help=f"nearest neighbours: exact (O(N^2)), approximate (faiss, O(N)), or auto: exact up to "
                        f"{EXACT_LIMIT} images")
    p.add_argument("--gallery", type=int, default=d("gallery"), help="findings shown per gallery in report.html")
    add_common_options(p, seed="the folds and the principal components")


def run(a):
    codes = code_paths(a)
    audit(codes if len(codes) > 1 else codes[0], runs_dir=a.runs_dir, threshold=a.threshold,
          cross_threshold=a.cross_threshold, neighbours=a.neighbours, folds=a.folds,
          outlier_fraction=a.outlier_fraction, gallery=a.gallery, seed=a.seed, progress=not a.no_progress,
          search=a.search)
    return 0
