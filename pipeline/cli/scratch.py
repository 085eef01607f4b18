"""Baseline: a small CNN trained from scratch on the same split as the cached codes: 4 x (conv
32 3x3 + max-pool), dropout, Dense 256, dropout, softmax; Adam, early stopping on validation.
Writes a run folder with model.keras and the report."""
from pipeline.cli import add_code_options, add_common_options, code_paths, default, finite_float, training_options
from pipeline.cli.train import add_positive_class
from pipeline.runs import SCRATCH, scratch

HELP = "baseline: a small CNN trained from scratch on the same split"


def add_arguments(p):
    f = lambda name: default(scratch, name) if name in ("image_size", "runs_dir") else getattr(SCRATCH, name)
    add_code_options(p)  # the code set whose images and stored split are used
    p.add_argument("--train-size", type=int, default=f("image_size"), help="input size of the from-scratch CNN, pixels")
    p.add_argument("--epochs", type=int, default=f("epochs"), help="most epochs; early stopping on validation loss")
    p.add_argument("--patience", type=int, default=f("patience"), help="early-stopping patience, epochs")
    p.add_argument("--batch-size", type=int, default=f("batch_size"), help="images per training step")
    p.add_argument("--learning-rate", type=finite_float, default=f("learning_rate"), help="Adam learning rate")
    p.add_argument("--augment", action="store_true", help="augment training images")
    p.add_argument("--strength", type=finite_float, default=f("strength"), help="augmentation strength (zoom/shift fraction)")
    add_positive_class(p)
    add_common_options(p, seed="shuffling, augmentation and initialization",
                       progress="no progress bar / per-epoch lines")


def run(a):
    scratch(code_paths(a)[0], image_size=a.train_size, runs_dir=a.runs_dir, **training_options(a))
    return 0
