#!/usr/bin/env python
"""Predict with an exported model: top-k class names and probabilities for an image or a folder."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__ + " For a folder, also writes a CSV.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("target", help="an image file or a folder of images (searched recursively)")
    p.add_argument("--model", required=True,
                   help="a .keras model written by export.py, finetune.py or scratch.py, or a run folder "
                        "(a head on codes is exported there first)")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to show per image")
    p.add_argument("--out", default="predictions.csv", help="CSV file for a folder's predictions")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    a = p.parse_args(argv)
    quiet_tensorflow()
    from pathlib import Path

    from pipeline.predict import predict, write_csv

    rows = predict(a.model, a.target, a.top_k, a.batch_size)
    if Path(a.target).is_dir():
        write_csv(rows, Path(a.out), min(a.top_k, len(rows[0][1])) if rows else a.top_k)
        print(f"{len(rows)} images predicted -> {a.out}")
    for path, top in rows[:20]:
        print(path + ": " + ", ".join(f"{name} {100 * prob:.1f}%" for name, prob in top))
    if len(rows) > 20:
        print(f"... ({len(rows) - 20} more in {a.out})")
    return 0 if rows else 1


if __name__ == "__main__":
    run_cli(main)
