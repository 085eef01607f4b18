#!/usr/bin/env python
"""Baseline: a small CNN trained from scratch on the same split as the cached codes."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    from pipeline.cli import add_code_options, code_paths

    p = argparse.ArgumentParser(
        description=__doc__ + " 4 x (conv 32 3x3 + max-pool), dropout, Dense 256, dropout, softmax; "
        "Adam, early stopping on validation. Writes a run folder with model.keras and the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_code_options(p)  # the code set whose images and stored split are used
    p.add_argument("--train-size", type=int, default=128, help="input size of the from-scratch CNN, pixels")
    p.add_argument("--epochs", type=int, default=60, help="most epochs; early stopping on validation loss")
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience, epochs")
    p.add_argument("--batch-size", type=int, default=32, help="images per training step")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--augment", action="store_true", help="augment training images")
    p.add_argument("--strength", type=float, default=0.1, help="augmentation strength (zoom/shift fraction)")
    p.add_argument("--runs-dir", default="runs", help="where the run folder is written")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffling, augmentation and initialization")
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="two classes: the class whose ROC AUC and precision-recall curve are reported "
                        "(default: the second class name in sorted order)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / per-epoch lines")
    a = p.parse_args(argv)
    quiet_tensorflow()
    from pipeline.finetune import train_scratch

    train_scratch(code_paths(a)[0], image_size=a.train_size, epochs=a.epochs, patience=a.patience,
                  batch_size=a.batch_size, learning_rate=a.learning_rate, augment=a.augment, strength=a.strength,
                  runs_dir=a.runs_dir, seed=a.seed, positive_class=a.positive_class, progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
