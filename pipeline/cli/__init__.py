"""The ``cnn-codes`` command line: one module per subcommand, each a thin layer that parses
arguments and calls the library by keyword. Defaults are read from the library's own signatures
(:func:`default`), so they are stated once, where the work is done."""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys
from pathlib import Path

from pipeline.backbones import DEFAULT_BACKBONE, POOLINGS
from pipeline.codes import CodeIdentity
from pipeline.data import LAYOUTS, TASKS, LayoutOptions
from pipeline.errors import MAX_SEED, UserError


def finite_float(text: str) -> float:
    """argparse type: a finite number (``inf`` and ``nan`` are refused where they are typed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seed_value(text: str) -> int:
    """argparse type: a seed NumPy and Keras accept, 0 .. 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text}: a seed is a whole number from 0 to {MAX_SEED}")
    return value


def default(fn, name: str):
    """The default of parameter ``name`` of ``fn``."""
    return inspect.signature(fn).parameters[name].default


# Library parameters whose flag is not the parameter's name with dashes (the one place the CLI
# maps parameter names to flags, so that a one-line error names the flag the user typed).
# A key "parameter@command" holds for that command only.
FLAGS = {"check_limit": "--check-images", "check_images": "--check-images", "n_jobs": "--jobs", "ns": "--n",
         "layers": "--layer", "poolings": "--pooling", "wait": "--no-wait", "image_size@scratch": "--train-size"}


def flag_of(parameter: str, command: str | None = None) -> str:
    """The command-line flag of a library parameter (in ``command``, where it has one of its own)."""
    return FLAGS.get(f"{parameter}@{command}") or FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: ...``, exit 2) instead of usage + message."""

    def error(self, message):
        print(f"error: {self.prog.split()[-1]}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


FORMATTER = argparse.ArgumentDefaultsHelpFormatter

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1e3,
    "KB": 1e3,
    "M": 1e6,
    "MB": 1e6,
    "G": 1e9,
    "GB": 1e9,
    "T": 1e12,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'4G', '500MB', '2GiB', '1000000' (bytes) or '25%' (of this machine's RAM) -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*|%)\s*", text)
    if not m or (m.group(2).upper() not in _UNITS and m.group(2) != "%"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (such as 4G, 500M or 25%)")
    value = float(m.group(1))
    if m.group(2) == "%":
        return int(value / 100 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return int(value * _UNITS[m.group(2).upper()])


def add_code_options(p, many: bool = False, join: bool = False) -> None:
    """Options that name a cached code set (or, with ``many``, several: their product; with
    ``join``, several code files whose codes are joined side by side)."""
    n = "+" if many else None
    p.add_argument(
        "--codes",
        nargs="+" if many or join else None,
        default=None,
        help="path of cached code file(s) (.h5); overrides the options below"
        + (
            "; several: their codes side by side, rows matched by image path"
            if join
            else "; a+b.h5 joins code files side by side (one curve)"
            if many
            else ""
        ),
    )
    p.add_argument("--data", default="examples/caltech5", help="image folder the codes were made from")
    p.add_argument(
        "--backbone",
        nargs=n,
        default=[DEFAULT_BACKBONE] if many else DEFAULT_BACKBONE,
        help="backbone the codes were made with",
    )
    p.add_argument(
        "--layer",
        nargs=n,
        default=[None] if many else None,
        help="layer the codes were taken from (default: the final conv block)",
    )
    p.add_argument("--pooling", nargs=n, default=["avg"] if many else "avg", choices=POOLINGS,
                   help="pooling of the codes")
    p.add_argument("--weights", default="imagenet", help="weights the codes were made with")
    p.add_argument("--image-size", type=int, default=None, help="input size the codes were made with")
    add_setting_options(p, made_with=True)
    p.add_argument("--cache-dir", default="cache", help="where code files are")


def add_common_options(p, *, seed: str | None = None, runs_dir: bool = True, progress: str | None = "no progress bar",
                       seed_default: int | None = 0):
    """The options several commands share, declared once: ``--runs-dir``, ``--seed`` (``seed``
    says what it seeds) and ``--no-progress`` (``progress``: its help)."""
    if runs_dir:
        p.add_argument("--runs-dir", default="runs", help="where run folders go")
    if seed:
        p.add_argument("--seed", type=seed_value, default=seed_default, help=f"seed of {seed}")
    if progress:
        p.add_argument("--no-progress", action="store_true", help=progress)


def add_layout_options(p) -> None:
    """How the data folder gives its labels (:class:`~pipeline.data.LayoutOptions`; docs/data.md)."""
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="how the folder gives labels: class folders, split folders (train/ val/ test/ of class "
                        "folders), a labels file, labels in file names, or none; auto: detected, named on the first line")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="a CSV or TSV labels file (image, label and optional split columns); implies --layout labels-file")
    p.add_argument("--image-column", default=None, help="labels file: the column naming the images (default: detected)")
    p.add_argument("--label-column", default=None, help="labels file: the column of the labels (default: detected)")
    p.add_argument("--split-column", default=None,
                   help="labels file: a column giving each image's split, train/val/test (default: detected)")
    p.add_argument("--label-pattern", default=None, metavar="REGEX",
                   help="labels in file names: the first group of a match on each file name is its class, e.g. "
                        "'^(.+)_\\d+\\.jpg$'; files that do not match are unlabelled")
    p.add_argument("--task", default="auto", choices=TASKS,
                   help="labels file: one label per image or several (auto: multi-label when a cell holds several "
                        "labels joined by | ; or , or the file has one 0/1 column per label)")


def layout_options(a) -> LayoutOptions:
    return LayoutOptions(layout=a.layout, labels=a.labels, image_column=a.image_column, label_column=a.label_column,
                         split_column=a.split_column, label_pattern=a.label_pattern, task=a.task)


def training_options(a) -> dict:
    """The :class:`~pipeline.runs.TrainingOptions` given on the command line."""
    return dict(epochs=a.epochs, patience=a.patience, batch_size=a.batch_size, learning_rate=a.learning_rate,
                augment=a.augment, strength=a.strength, seed=a.seed, positive_class=a.positive_class,
                progress=not a.no_progress)


def add_setting_options(p, made_with: bool = False) -> None:
    """One option per setting of a code set, derived from :class:`CodeIdentity`'s fields (with
    ``made_with``: only those that make a code set of its own, to name one already made)."""
    for f in CodeIdentity.settings():
        if made_with and not f.metadata["folder"]:
            continue
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, choices=f.metadata["choices"],
                       help=f.metadata["help"] + ("; the setting the codes were made with" if made_with else ""))


def code_paths(a) -> list[Path]:
    """The code files named by :func:`add_code_options`; a clear error for any not yet made."""

    if a.codes:
        return [Path(c) for c in ([a.codes] if isinstance(a.codes, str) else a.codes)]
    listify = lambda v: v if isinstance(v, list) else [v]
    settings = {f.name: getattr(a, f.name) for f in CodeIdentity.settings() if f.metadata["folder"]}
    paths = []
    for bb in listify(a.backbone):
        for layer in listify(a.layer):
            for pooling in listify(a.pooling):
                identity = CodeIdentity.of(bb, layer, pooling, a.weights, a.image_size, **settings)
                path = identity.path(a.cache_dir, a.data)
                if not path.exists():
                    raise UserError(f"no cached codes for {bb} {identity.layer}/{pooling} at {path}; "
                                    f"make them with: {identity.make_command(a.data)}")
                paths.append(path)
    return paths
