"""Training-size sweep: accuracy vs. training images per class, on cached codes.

For each code set, head, N and repeat: draw N training images per class from the stored
training split (classes with fewer keep all of theirs), fit the head (validation split for
early stopping / choosing C), evaluate on the stored test split. Runs are spread over worker
processes with joblib's loky executor; each worker uses one thread, so the figures are identical
whatever the number of workers.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import as_completed
from pathlib import Path

import numpy as np
from joblib import cpu_count
from joblib.externals.loky import get_reusable_executor
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from pipeline._files import writable_folder
from pipeline._records import Run, assembled_run
from pipeline._tf import quiet_tensorflow
from pipeline.codes import open_code_sets
from pipeline.data import TEST, TRAIN, VAL
from pipeline.errors import ParameterError, UserError, check_seed
from pipeline.heads import HEADS, make_head
from pipeline.reports import build_report, evaluate_multi_label, plain_text, shown

logger = logging.getLogger(__name__)

# Deferred on purpose: scikit-learn, matplotlib are imported inside the functions that use them, so
# that commands and workers that never need them start without loading them.

DEFAULT_NS = ("1", "2", "5", "10", "15", "20", "30", "all")


def parse_ns(values) -> list:
    """['1', '5', 'all'] -> [1, 5, 'all'] (sorted, unique); errors for anything else."""
    if not values:
        raise UserError("the list of images per class (--n) is empty")
    out = set()
    for v in values:
        if str(v).lower() == "all":
            out.add("all")
            continue
        try:
            n = int(v)
        except ValueError:
            raise ParameterError("ns", f"{v!r}: expected positive whole numbers or 'all'") from None
        if n < 1:
            raise ParameterError("ns", f"{v!r}: expected positive whole numbers or 'all'")
        out.add(n)
    return sorted((n for n in out if n != "all")) + (["all"] if "all" in out else [])


def draw_train(labels: np.ndarray, split: np.ndarray, n, seed: int, repeat: int) -> np.ndarray:
    """Indices of min(n, class size) training images of each class (all if n == 'all'); a
    multi-label set (``labels`` (N, labels) 0/1): n images with each label, the union of them.

    One permutation per (seed, repeat, class), so the draws for growing N are nested.
    """
    chosen = []
    if np.ndim(labels) == 2:
        for c in range(labels.shape[1]):
            idx = np.flatnonzero((labels[:, c] > 0) & (split == TRAIN))
            perm = np.random.default_rng([seed, repeat, int(c)]).permutation(idx)
            chosen.append(perm if n == "all" else perm[:n])
        return np.unique(np.concatenate(chosen + [np.zeros(0, np.int64)]))
    for c in np.unique(labels[split == TRAIN]):
        idx = np.flatnonzero((labels == c) & (split == TRAIN))
        perm = np.random.default_rng([seed, repeat, int(c)]).permutation(idx)
        chosen.append(perm if n == "all" else perm[:n])
    return np.sort(np.concatenate(chosen))


_CODES: dict = {}


def _codes(path):
    if path not in _CODES:  # each worker reads a code file once
        _CODES.clear()
        _CODES[path] = open_code_sets(path)
    return _CODES[path]


def _single_thread():
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = "1"
    quiet_tensorflow()


def run_one(path: str, head: str, n, repeat: int, seed: int, head_params: dict) -> dict:
    """One (code set, head, N, repeat) run; returns its row of figures."""
    from sklearn.metrics import balanced_accuracy_score

    cs = _codes(path)
    tr = draw_train(cs.y, cs.split, n, seed, repeat)
    va, te = cs.split == VAL, cs.split == TEST
    with threadpool_limits(1):
        t0 = time.perf_counter()
        params = dict(head_params.get(head, {}))
        if "seed" in HEADS[head]().get_params():
            params["seed"] = seed + repeat
        model = make_head(head, **params)
        model.fit(cs.X[tr], cs.y[tr], validation_data=(cs.X[va], cs.y[va]) if va.any() else None,
                  classes=np.arange(len(cs.class_names)))
        proba = model.predict_proba(cs.X[te])  # predicted once: classes, or labels by their thresholds
        seconds = time.perf_counter() - t0
    if cs.multi_label:  # the curve of a multi-label set is mAP (and macro F1 beside it)
        m = evaluate_multi_label(cs.y[te], proba, model.thresholds_, cs.class_names)
        return {"n": n, "repeat": repeat, "head": head, "n_train": int(len(tr)), "accuracy": m["mAP"] or 0.0,
                "mean_per_class_accuracy": m["macro_f1"], "seconds": round(seconds, 3)}
    pred = model.classes_[proba.argmax(1)]
    return {"n": n, "repeat": repeat, "head": head, "n_train": int(len(tr)),
            "accuracy": float((pred == cs.y[te]).mean()),
            "mean_per_class_accuracy": float(balanced_accuracy_score(cs.y[te], pred)),
            "seconds": round(seconds, 3)}


def _code_label(cs_attrs: dict) -> str:
    return f"{cs_attrs.get('backbone')} {cs_attrs.get('layer')}/{cs_attrs.get('pooling')}"


def _run_in_workers(tasks, order, rows, workers, seed, head_params, progress) -> None:
    """The runs on ``workers`` processes (one BLAS thread each), results into ``rows``."""
    _single_thread()  # also for this process's environment, inherited by the workers
    # loky's resource tracker (a process of its own) warns of the locks of workers stopped on Ctrl-C:
    # nothing a user can act on, so it is silenced there (the command says "interrupted")
    tracker = "ignore::UserWarning:joblib.externals.loky.backend.resource_tracker"
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), tracker]))
    executor = get_reusable_executor(max_workers=workers, initializer=_single_thread, reuse=False)
    try:
        futures = {executor.submit(run_one, *tasks[i], seed, head_params): i for i in order}
        with tqdm(total=len(tasks), unit="run", disable=not progress, desc="sweep") as bar:
            for fut in as_completed(futures):
                i = futures[fut]
                rows[i] = dict(fut.result(), code_set=tasks[i][0])
                bar.update()
    except BaseException:  # Ctrl-C, SIGTERM, an error: no worker outlives the command
        # (killed before this returns: the command then ends at once, and a shutdown that only
        # asked loky's manager thread to kill them left them running on for about 45 s)
        executor.shutdown(wait=True, kill_workers=True)
        raise
    executor.shutdown(wait=True)


def sweep(code_paths, heads=("softmax", "mlp", "logreg"), ns=None, repeats=5, seed=0, n_jobs=-1,
              runs_dir="runs", head_params=None, progress=True) -> Run:
    """Run the sweep; write sweep.csv, summary.json and sweep.png in a new run folder; return it.

    ``ns`` None means :data:`DEFAULT_NS` without the values that no class reaches (small data
    sets); N values given explicitly must each fit some class.
    """


    default_ns = ns is None
    ns = parse_ns(DEFAULT_NS if default_ns else ns)
    if n_jobs is not None and n_jobs != -1 and n_jobs < 1:
        raise ParameterError("n_jobs", f"{n_jobs}: give a number of worker processes, or -1 for one per CPU core")
    if repeats < 1:
        raise ParameterError("repeats", "must be at least 1")
    check_seed(seed)
    unknown = [h for h in heads if h not in HEADS]
    if unknown or not heads:
        raise UserError(f"unknown head(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(HEADS)}")
    head_params = head_params or {}
    sets = []
    for path in map(str, code_paths):  # a+b: joined code sets, one curve
        cs = open_code_sets(path)
        train_counts = (cs.y[cs.split == TRAIN].sum(0) if cs.multi_label
                        else np.bincount(cs.y[cs.split == TRAIN], minlength=len(cs.class_names)))
        metric = "mAP" if cs.multi_label else "accuracy"
        if (cs.split == TEST).sum() == 0:
            raise UserError(f"{path}: the stored split has no test images")
        sets.append({"path": path, "label": _code_label(cs.attrs), "attrs": cs.attrs, "class_names": cs.class_names,
                     "n_classes": len(cs.class_names), "train_counts": train_counts.tolist(),
                     "mean_train_per_class": float(train_counts.mean()), "split_digest": cs.split_digest(),
                     "metric": metric})
        del cs
    for s in sets:
        largest = max(s["train_counts"])
        too_big = [n for n in ns if n != "all" and n > largest]
        if too_big and default_ns:
            logger.info(f"note: N={', '.join(map(str, too_big))} left out: no class of {s['path']} has more than "
                        f"{largest} training images")
            ns = [n for n in ns if n not in too_big]
        elif too_big:
            raise UserError(f"N={too_big[0]} is larger than any class of {s['path']} (the largest has {largest} "
                            f"training images); use N <= {largest} or 'all'")
    for s in sets:
        counts, names = np.array(s["train_counts"]), s.pop("class_names")
        s["capped"] = {str(n): [names[c] for c in np.flatnonzero(counts < n)] for n in ns if n != "all"}
    writable_folder(runs_dir, "--runs-dir")

    tasks = [(s["path"], h, n, r) for s in sets for h in heads for n in ns for r in range(repeats)]
    workers = max(1, min(len(tasks), cpu_count() if n_jobs in (None, -1) else int(n_jobs)))
    t0 = time.perf_counter()
    rows = [None] * len(tasks)
    # Biggest runs first, so no worker is left with a long one at the end (results do not depend
    # on the order: each run has its own seed).
    order = sorted(range(len(tasks)), key=lambda i: (tasks[i][2] != "all", -(tasks[i][2] if tasks[i][2] != "all" else 0),
                                                      tasks[i][1] != "logreg"))
    if workers == 1:  # in this process: a worker process would first spend seconds importing
        with tqdm(total=len(tasks), unit="run", disable=not progress, desc="sweep") as bar:
            for i in order:
                rows[i] = dict(run_one(*tasks[i], seed, head_params), code_set=tasks[i][0])
                bar.update()
    else:
        _run_in_workers(tasks, order, rows, workers, seed, head_params, progress)
    wall = time.perf_counter() - t0

    summary = []
    for s in sets:
        for h in heads:
            for n in ns:
                rs = [r for r in rows if r["code_set"] == s["path"] and r["head"] == h and r["n"] == n]
                acc = np.array([r["accuracy"] for r in rs])
                mpc = np.array([r["mean_per_class_accuracy"] for r in rs])
                summary.append({"code_set": s["path"], "label": s["label"], "head": h, "n": n,
                                "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std()),
                                "mean_per_class_accuracy_mean": float(mpc.mean()),
                                "mean_per_class_accuracy_std": float(mpc.std()),
                                "accuracy_per_repeat": acc.tolist(), "mean_per_class_accuracy_per_repeat": mpc.tolist(),
                                "classes_with_fewer_than_n": s["capped"].get(str(n), []),
                                "seconds_mean": float(np.mean([r["seconds"] for r in rs]))})
    metric = "mAP" if any(s["metric"] == "mAP" for s in sets) else "accuracy"
    record = {"heads": list(heads), "ns": ns, "repeats": repeats, "seed": seed, "workers": workers, "metric": metric,
              "wall_seconds": round(wall, 2), "head_params": head_params,
              "code_sets": [{k: (v if k != "attrs" else {a: str(b) for a, b in v.items()}) for k, v in s.items()}
                            for s in sets],
              "summary": summary}
    with assembled_run(runs_dir, "sweep") as run:  # appears whole, or not at all
        run_dir = run.path
        by_path = {s["path"]: s for s in sets}
        fields = ["backbone", "layer", "pooling", "image_size", "head", "n", "repeat", "n_train", "accuracy",
                  "mean_per_class_accuracy", "seconds", "code_set"]
        with open(run_dir / "sweep.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            for row in rows:
                a = by_path[row["code_set"]]["attrs"]
                w.writerow({**{k: a.get(k) for k in ("backbone", "layer", "pooling", "image_size")},
                            **{k: row[k] for k in fields if k in row}})
        (run_dir / "summary.json").write_text(json.dumps(record, indent=2))
        plot_sweep(summary, sets, run_dir / "sweep.png")
        build_report(run_dir)
    run_dir = run.path
    logger.info(format_table(summary, ns, metric))
    logger.info(f"{len(tasks)} runs on {workers} worker(s) in {wall:.1f} s -> {run_dir}")
    return Run(run_dir, "sweep", {"summary": summary})


def format_table(summary, ns, metric: str = "accuracy") -> str:
    """Plain-text table: one row per code set and head, mean accuracy (and std) per N."""
    labels = sorted({(s["label"], s["head"]) for s in summary}, key=lambda x: (x[0], x[1]))
    width = max(len(f"{l} {h}") for l, h in labels)
    lines = [f"test {metric} (%), mean ± std over repeats"]
    lines += [f"{'code set / head':{width}s} " + " ".join(f"{'N=' + str(n):>12s}" for n in ns)]
    for l, h in labels:
        cells = []
        for n in ns:
            s = next(x for x in summary if x["label"] == l and x["head"] == h and x["n"] == n)
            cells.append(f"{100 * s['accuracy_mean']:6.2f}±{100 * s['accuracy_std']:4.2f}")
        lines.append(f"{l + ' ' + h:{width}s} " + " ".join(f"{c:>12s}" for c in cells))
    return "\n".join(lines)


@plain_text
def plot_sweep(summary, sets, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    all_x = max(s["mean_train_per_class"] for s in sets)
    for (label, head) in sorted({(s["label"], s["head"]) for s in summary}):
        pts = [s for s in summary if s["label"] == label and s["head"] == head]
        x = np.array([all_x if s["n"] == "all" else s["n"] for s in pts], float)
        m = np.array([s["accuracy_mean"] for s in pts]) * 100
        sd = np.array([s["accuracy_std"] for s in pts]) * 100
        (line,) = ax.plot(x, m, marker="o", label=shown(f"{label} · {head}"))
        ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.2)
    metric = sets[0].get("metric", "accuracy")
    if metric == "accuracy":
        chance = 100 / min(s["n_classes"] for s in sets)
        ax.axhline(chance, color="grey", linestyle="--", label=f"chance ({chance:.1f}%)")
    ax.set_xscale("log")
    ns = sorted({s["n"] for s in summary if s["n"] != "all"})
    ticks = ns + ([all_x] if any(s["n"] == "all" for s in summary) else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(n) for n in ns] + ([f"all\n(~{all_x:.0f})"] if len(ticks) > len(ns) else []))
    ax.minorticks_off()
    ax.set_xlabel(f"training images per {'label' if metric == 'mAP' else 'class'} (log scale)")
    ax.set_ylabel(f"test {metric} (%), mean ± 1 std over repeats")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{metric} vs. training images per {'label' if metric == 'mAP' else 'class'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
