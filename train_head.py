#!/usr/bin/env python
"""Stage 2: train a softmax, MLP or logistic-regression head on cached CNN codes and evaluate it."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    from pipeline.cli import add_code_options, code_paths
    from pipeline.heads import HEADS

    p = argparse.ArgumentParser(
        description=__doc__ + " The code file is named by --codes, or found from the same options "
        "that made it with generate_codes.py. Writes a run folder with the head, record.json, "
        "report.txt, confusion.png and history.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--head", default="softmax", choices=list(HEADS), help="which head to train")
    add_code_options(p)
    p.add_argument("--runs-dir", default="runs", help="where run folders go")
    p.add_argument("--epochs", type=int, default=200, help="Keras heads: most epochs (early stopping ends sooner)")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="Keras heads: Adam learning rate")
    p.add_argument("--batch-size", type=int, default=256, help="Keras heads: batch size")
    p.add_argument("--patience", type=int, default=5, help="Keras heads: early-stopping patience, epochs")
    p.add_argument("--min-delta", type=float, default=0.002,
                   help="Keras heads: smallest loss improvement that counts for early stopping")
    p.add_argument("--hidden", type=int, nargs="+", default=[256], help="mlp: hidden layer sizes")
    p.add_argument("--dropout", type=float, default=0.5, help="mlp: dropout after each hidden layer")
    p.add_argument("--Cs", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0],
                   help="logreg: inverse regularization strengths to choose from on the validation set")
    p.add_argument("--class-weight", action="store_true", help="weight classes inversely to their frequency")
    p.add_argument("--seed", type=int, default=0, help="seed of the head's initialization and shuffling")
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="two classes: the class whose ROC AUC and precision-recall curve are reported "
                        "(default: the second class name in sorted order)")
    a = p.parse_args(argv)

    quiet_tensorflow()
    from pipeline.train import train_on_codes

    path = code_paths(a)[0]
    common = dict(class_weight=a.class_weight, seed=a.seed)
    keras_opts = dict(epochs=a.epochs, learning_rate=a.learning_rate, batch_size=a.batch_size, patience=a.patience,
                      min_delta=a.min_delta)
    params = {"softmax": dict(common, **keras_opts),
              "mlp": dict(common, **keras_opts, hidden=tuple(a.hidden), dropout=a.dropout),
              "logreg": dict(common, Cs=tuple(a.Cs))}[a.head]
    train_on_codes(path, head=a.head, head_params=params, runs_dir=a.runs_dir, positive_class=a.positive_class)
    return 0


if __name__ == "__main__":
    run_cli(main)
