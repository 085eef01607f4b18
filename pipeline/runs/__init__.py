"""Runs: a head on codes, the training-size sweep, fine-tuning and the from-scratch baseline, each
ending in a run folder; and the table that compares them."""

from pipeline._records import Run
from pipeline.runs._finetune import FINETUNING, SCRATCH, TrainingOptions, finetune, scratch
from pipeline.runs._folders import Tested, compare_table, finish_run
from pipeline.runs._sweep import DEFAULT_NS, parse_ns, sweep
from pipeline.runs._train import check_folds, train

__all__ = [
    "Run",
    "Tested",
    "train",
    "check_folds",
    "DEFAULT_NS",
    "parse_ns",
    "sweep",
    "finetune",
    "FINETUNING",
    "SCRATCH",
    "TrainingOptions",
    "scratch",
    "compare_table",
    "finish_run",
]
