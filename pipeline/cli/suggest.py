"""The next unlabelled images worth labelling, for people who label with another tool: stage 1
on DATA (only what is missing is computed; images without a label in its labels file, or loose
beside class folders, are the pool), then the choice of --strategy, written to --out as a CSV
whose first column is each image's path relative to DATA, best first."""
import csv
from pathlib import Path

from pipeline._files import durable_replace, temporary_beside
from pipeline.cli import codes, seed_value
from pipeline.codes import CodeSet
from pipeline.data import UNLABELLED, excluded_images
from pipeline.errors import ParameterError
from pipeline.label import GROUP_SIZE, STRATEGIES, labels_file_of, select_group, select_next
from pipeline.reports import to_cell

HELP = "the next unlabelled images to label, as a CSV"

# Stage 1 imports TensorFlow (quietly) only where it builds a Keras model (see codes).
NEEDS_TENSORFLOW = False


def add_arguments(p):
    codes.add_arguments(p)
    p.add_argument("--n", type=int, required=True, help="how many images to suggest")
    p.add_argument("--out", required=True, help="CSV file to write (path relative to DATA, rank, strategy)")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="random; coverage (typical images of dense regions, for the first labels); margin (those "
                        "the current labels leave least certain); auto (coverage while labels are few, then margin "
                        "with diversity)")
    p.add_argument("--draw-seed", type=seed_value, default=0,
                   help="seed of the choice (random draws, k-means); --seed is the split's, as in codes")
    p.add_argument("--groups", action="store_true",
                   help="groups of look-alikes to label a group at a time (as the labelling app's g), densest first: "
                        "columns path, group, suggested (the class the current labels suggest)")
    p.add_argument("--group-size", type=int, default=GROUP_SIZE, help="--groups: images per group at most")


def write_whole(out: Path, header, rows) -> None:
    """The CSV ``out``, whole or absent."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(out)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            # cells a spreadsheet would run as formulas (=2+5.jpg) neutralised, as in every CSV we write
            w.writerows([to_cell(c) if isinstance(c, str) else c for c in row] for row in rows)
        durable_replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_groups(a, cs, out: Path, left_out: list) -> int:
    """--groups: groups of look-alikes, densest first, until --n images are in them."""
    if a.group_size < 1:
        raise ParameterError("group_size", "must be at least 1")
    taken, rows, n_groups = list(left_out), [], 0
    pool = int((cs.split == UNLABELLED).sum()) - len(left_out)
    while len(rows) < a.n and len(taken) - len(left_out) < pool:
        group = select_group(cs, int(min(a.group_size, a.n - len(rows))), a.draw_seed + n_groups, exclude=taken)
        n_groups += 1
        name = "" if group.suggested is None else cs.class_names[group.suggested]
        rows += [(cs.paths[r], n_groups, name) for r in group.rows]
        taken += group.rows.tolist()
    write_whole(out, ["path", "group", "suggested"], rows)
    print(f"{len(rows)} of {pool + len(left_out)} unlabelled images suggested in {n_groups} group(s) of look-alikes"
          + (f", {len(left_out)} excluded in the labelling app left out" if left_out else "") + f" -> {out}")
    return 0


def run(a):
    if a.n < 1:
        raise ParameterError("n", "must be at least 1")
    out = Path(a.out)
    if out.is_dir():
        raise ParameterError("out", f"{out} is a folder: give a file name")
    cs = CodeSet(codes.compute_codes(a)[0])
    excluded = excluded_images(labels_file_of(cs, Path(a.data), a.labels))  # (as the labelling app leaves them out)
    left_out = [i for i, p in enumerate(cs.paths) if p in excluded] if excluded else []
    if a.groups:
        return write_groups(a, cs, out, left_out)
    choice = select_next(cs, a.n, a.strategy, a.draw_seed, exclude=left_out)
    write_whole(out, ["path", "rank", "strategy"],
                [(cs.paths[row], rank, choice.strategy) for rank, row in enumerate(choice.rows, 1)])
    print(f"{len(choice.rows)} of {int((cs.split == UNLABELLED).sum())} unlabelled images suggested ({choice.strategy})"
          + (f", {len(excluded)} excluded in the labelling app left out" if excluded else "") + f" -> {out}")
    return 0
