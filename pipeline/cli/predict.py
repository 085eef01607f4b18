"""Predict with an exported model: top-k class names and probabilities for an image or a folder
(a folder's predictions also go to a CSV file)."""
from pathlib import Path

from pipeline.cli import default
from pipeline.codes import RUNTIMES
from pipeline.deploy import format_rows, predict, write_csv

HELP = "top-k classes of an image or a folder with an exported model"


def add_arguments(p):
    p.add_argument("target", help="an image file or a folder of images (searched recursively)")
    p.add_argument("--model", required=True,
                   help="a .keras model written by export, finetune or scratch, or a run folder "
                        "(a head on codes is exported there first)")
    p.add_argument("--top-k", type=int, default=default(predict, "top_k"), help="how many classes to show per image")
    p.add_argument("--out", default="predictions.csv", help="CSV file for a folder's predictions")
    p.add_argument("--batch-size", type=int, default=default(predict, "batch_size"), help="images per forward pass")
    p.add_argument("--runtime", default=default(predict, "runtime"), choices=RUNTIMES,
                   help="where the model runs: auto is OpenVINO on a machine without a GPU where it is installed")


def run(a):
    rows = predict(a.model, a.target, top_k=a.top_k, batch_size=a.batch_size, runtime=a.runtime)
    if Path(a.target).is_dir():
        write_csv(rows, Path(a.out))
        print(f"{len(rows)} images predicted -> {a.out}")
    print(format_rows(rows, limit=20, more_in=a.out))
    return 0 if rows else 1
