"""Train one head on one cached code set, evaluate it on the stored test split, save a run."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline._files import writable_folder
from pipeline._records import Run
from pipeline.codes import CodeStream, JoinedCodeSet, open_code_sets
from pipeline.data import TEST, TRAIN, UNLABELLED, VAL, excluded_images, labels_file_for
from pipeline.errors import ParameterError, UserError, check_seed
from pipeline.heads import make_head
from pipeline.reports import evaluate_multi_label, positive_index, wilson
from pipeline.runs._folders import Tested, finish_run

logger = logging.getLogger(__name__)


def default_memory_limit() -> int:
    """Half of this machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _title(cs, head: str) -> str:
    return f"{head} on {cs.attrs.get('backbone')} {cs.attrs.get('layer')}/{cs.attrs.get('pooling')}"


def check_folds(cv) -> None:
    """``cv`` is None (the stored split) or a whole number of folds, 2 or more."""
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2):
        raise ParameterError("cv", f"{cv!r}: expected a whole number of folds, 2 or more")


def train(codes, head="logreg", *, runs_dir="runs", positive_class=None, memory_limit=None, cv=None,
          unlabelled=False, **head_params) -> Run:
    """Fit ``head`` (with ``head_params``, the head's own parameters: ``epochs``, ``Cs``, ...) on
    the train part of a code set (validation part for model selection),
    evaluate on its test part and write a run folder. Returns its :class:`Run`. ``codes``: a code
    file, a :class:`~pipeline.codes.CodeSet`, or a list of code files (or paths joined by ``+``):
    trains on their codes side by side, rows matched by image
    path (:class:`~pipeline.codes.JoinedCodeSet`).

    ``cv`` K: K-fold cross-validation instead of the stored split (for small sets, whose test part
    is too small to tell heads apart): every labelled image is predicted by the head of the fold
    that did not train on it (``predictions.csv`` holds them all), the run's figures are those
    out-of-fold predictions', and the head saved is trained on every labelled image.

    ``unlabelled``: learn from the code set's unlabelled images too (labels spread over the
    codes' nearest-neighbour graph, balanced over the classes, then the head trained on labelled
    and pseudo-labelled codes), where held-out labels find it better than the labelled images
    alone; the summary line says ``with U unlabelled images`` or ``U unlabelled images not used:
    <reason>``. Never validation or test images, never images excluded in the labelling app.

    Codes that take more than ``memory_limit`` bytes as float32 (default: half the RAM) are
    not loaded: the head is trained on them streamed from the file, a few blocks in memory at a
    time (:class:`~pipeline.codes._codeset.CodeStream`), with a note saying so."""
    check_seed(head_params.get("seed"))
    check_folds(cv)
    writable_folder(runs_dir, "--runs-dir")
    cs = open_code_sets(codes)
    codes_path = cs.path
    limit = default_memory_limit() if memory_limit is None else int(memory_limit)
    if limit <= 0:
        raise ParameterError("memory_limit", "must be more than 0")
    if isinstance(cs, JoinedCodeSet):
        if cs.dropped:
            logger.info(f"note: {cs.dropped} image(s) are not in every code set and are left out; "
                        f"training on the {len(cs)} in all of them")
        if cs.nbytes() > limit:
            raise UserError(f"joined code sets are trained in memory: their {cs.nbytes() / 1e9:.2f} GB exceed "
                            f"--memory-limit {limit / 1e9:.2f} GB; raise it or join fewer sets")
    if cv is not None and unlabelled:
        raise ParameterError("unlabelled", "and --cv: choose one (cross-validation tests every labelled image; the "
                                           "unlabelled ones are used with the stored split)")
    if cv is not None:
        return _cross_validate(cs, head, int(cv), runs_dir, positive_class, limit, head_params)
    if cs.nbytes() <= limit:
        X_tr, y_tr = cs.part(TRAIN)
        X_va, y_va = cs.part(VAL)
        X_te, y_te = cs.part(TEST)
    else:
        # a sixth of the limit: a block being read, its selected rows and the block the head still
        # holds can be in memory at once, besides what the head and TensorFlow need
        budget = max(256, limit // (6 * cs.shape[1] * 4))
        X_tr, X_va, X_te = (CodeStream(cs, cs.split == s, budget) for s in (TRAIN, VAL, TEST))
        y_tr, y_va, y_te = X_tr.y, X_va.y, X_te.y
        logger.info(f"note: the codes take {cs.nbytes() / 1e9:.2f} GB as float32, more than --memory-limit "
                    f"{limit / 1e9:.2f} GB: training out of core, streaming at most {budget} codes at a time from "
                    f"{codes_path}"
                    + (" (logistic regression by minibatch gradient descent, C = the largest of --Cs)"
                       if head == "logreg" else ""))
    if not cs.labelled.any():
        raise UserError(f"{codes_path}: none of its {len(cs)} images has a label (layout "
                        f"{json.loads(cs.attrs.get('layout', '{}')).get('layout', 'unlabelled')}); give them labels "
                        f"(a labels file, class folders: docs/data.md) and run make codes again")
    if cs.multi_label and isinstance(X_tr, CodeStream):
        raise UserError(f"{codes_path}: multi-label heads are trained in memory and its codes take "
                        f"{cs.nbytes() / 1e9:.2f} GB, more than --memory-limit {limit / 1e9:.2f} GB; raise it")
    if len(X_te) == 0 or len(np.unique(y_tr)) < 2:
        raise UserError(f"{codes_path}: the stored split has no test images or fewer than two training classes")
    if cs.multi_label and positive_class is not None:
        raise ParameterError("positive_class", "applies to single-label sets of two classes; this one is multi-label "
                                               "(every label has its own average precision in the report)")
    if not cs.multi_label:
        positive_index(cs.class_names, positive_class)  # checked before training
    model = make_head(head, **head_params)
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr, validation_data=(X_va, y_va) if len(X_va) else None,
              classes=np.arange(len(cs.class_names)))
    seconds = time.perf_counter() - t0
    semi = None
    if unlabelled:
        t0 = time.perf_counter()
        model, semi = _with_unlabelled(cs, head, head_params, model, (X_tr, y_tr), (X_va, y_va))
        seconds += time.perf_counter() - t0
        logger.info(f"{semi.line}" + (f" ({semi.rule})" if semi.rule else ""))
    title = _title(cs, head)
    record = {
        "title": title, "kind": "head-on-codes", "head": head, "head_params": head_params,
        "codes": str(Path(codes_path)), "code_attrs": {k: str(v) for k, v in cs.attrs.items()},
        "n_train": int(len(y_tr)), "n_val": int(len(y_va)), "n_test": int(len(y_te)),
        "test_paths": [p for p, s in zip(cs.paths, cs.split) if s == TEST], "train_seconds": round(seconds, 3),
        "out_of_core": not isinstance(X_tr, np.ndarray), "split_digest": cs.split_digest(),
    }
    if semi is not None:
        record["unlabelled"] = dataclasses.asdict(semi)
    return finish_run(runs_dir, f"{cs.attrs.get('backbone')}-{head}", record=record, save=model.save,
                      tested=Tested(y_te, model.predict_proba(X_te), cs.class_names, record["test_paths"],
                                    cs.data_root, positive_class, getattr(model, "thresholds_", None)),
                      history=model.history_,
                      train_paths=[p for p, s in zip(cs.paths, cs.split) if s in (TRAIN, VAL)],
                      detail=f"trained in {seconds:.1f} s on {len(y_tr)} codes of {X_tr.shape[1]} values"
                      + (f" {semi.line}" if semi is not None else ""))


@dataclasses.dataclass(frozen=True)
class Unlabelled:
    """What became of the code set's unlabelled images (``train(..., unlabelled=True)``): how many
    the head could use, whether it did, why, and the rule that chose."""

    available: int
    used: bool
    reason: str = ""
    rule: str = ""
    pseudo_labelled: int = 0

    @property
    def line(self) -> str:
        """The words of the summary line: exactly one of the two forms."""
        if self.used:
            return f"with {self.available} unlabelled images"
        return f"{self.available} unlabelled images not used: {self.reason}"


def _with_unlabelled(cs, head, head_params, alone, train, validation):
    """The head trained on the labelled codes (``alone``) or one trained on them and the
    pseudo-labelled unlabelled codes (labels spread over the codes' graph, balanced over the
    classes: :mod:`pipeline.heads._semi`), whichever held-out labels find better: the validation
    part where it has two images per class, else folds of the training labels. Validation and
    test images never join the graph; images excluded in the labelling app neither."""
    from pipeline.heads import held_out_gain, propagate, reduced

    free = np.asarray(cs.split) == UNLABELLED
    excluded = _excluded(cs)
    if excluded:
        free &= ~np.isin(np.asarray(cs.paths, dtype=object), list(excluded))
    n_free = int(free.sum())
    X_tr, y_tr = train
    X_va, y_va = validation
    if cs.multi_label:
        return alone, Unlabelled(n_free, False, "multi-label sets learn from their labelled images only, for now")
    if not isinstance(X_tr, np.ndarray):
        return alone, Unlabelled(n_free, False, "the codes are trained out of core (semi-supervision is in memory)")
    if n_free == 0:
        return alone, Unlabelled(0, False, "the code set has none (every image has a label, or is excluded)")
    seed = head_params.get("seed") or 0
    n_classes = len(cs.class_names)
    X_free = cs.rows(free)
    Z = reduced(np.concatenate([X_tr, X_free]), seed)
    seen = np.zeros(len(Z), bool)
    seen[:len(y_tr)] = True
    target = np.concatenate([y_tr, np.zeros(n_free, int)])
    spread = propagate(Z, target, seen, n_classes).labels
    pseudo = spread[len(y_tr):]

    def with_them():
        return make_head(head, **head_params).fit(np.concatenate([X_tr, X_free]), np.concatenate([y_tr, pseudo]),
                                                  validation_data=(X_va, y_va) if len(y_va) else None,
                                                  classes=np.arange(n_classes))
    present = len(np.unique(y_tr))
    if len(y_va) >= 2 * present:  # a validation part of two images per class: the heads themselves compared
        semi = with_them()
        with_, without = (float((m.predict(X_va) == y_va).mean()) for m in (semi, alone))
        rule = f"validation accuracy {with_:.4f} with them, {without:.4f} without"
        if with_ > without:
            return semi, Unlabelled(n_free, True, rule=rule, pseudo_labelled=n_free)
        return alone, Unlabelled(n_free, False, f"they did not help on the validation images ({rule})", rule)
    verdict = held_out_gain(Z, target, seen, n_classes, spread, seed)
    rule = (f"{verdict.rule}: {verdict.spread:.4f} right spread over the unlabelled codes, {verdict.alone:.4f} from "
            f"the labelled codes alone" + (f", {verdict.margin:.2f} more needed" if verdict.margin else "")
            + " (too few validation images to choose on)")
    if verdict.helps:
        return with_them(), Unlabelled(n_free, True, rule=rule, pseudo_labelled=n_free)
    return alone, Unlabelled(n_free, False, f"they did not help ({rule})", rule)


def _excluded(cs) -> set:
    """The images excluded in the labelling app, from the labels file of the code set's layout."""
    labels = labels_file_for(cs.attrs.get("layout"), cs.data_root)
    return excluded_images(labels) if labels is not None else set()


def _cross_validate(cs, head: str, k: int, runs_dir, positive_class, limit: int, head_params: dict) -> Run:
    """K folds over every labelled image (stratified by class; multi-label sets: plain folds): each
    fold's head tested on the images it did not train on; then the head of every image, saved."""
    from sklearn.model_selection import KFold, StratifiedKFold
    from tqdm.auto import tqdm

    labelled = cs.labelled
    if not labelled.any():
        raise UserError(f"{cs.path}: none of its {len(cs)} images has a label: nothing to cross-validate")
    if cs.nbytes(labelled) > limit:
        raise UserError(f"--cv trains in memory: the labelled codes take {cs.nbytes(labelled) / 1e9:.2f} GB, more "
                        f"than --memory-limit {limit / 1e9:.2f} GB (a set this large has a test part large enough: "
                        f"train without --cv)")
    X, y = cs.rows(labelled), np.asarray(cs.y)[labelled]
    paths = [p for p, keep in zip(cs.paths, labelled) if keep]
    n, classes = len(y), np.arange(len(cs.class_names))
    if k > n:
        raise ParameterError("cv", f"{k} folds of {n} labelled images: at most {n}")
    seed = head_params.get("seed") or 0
    if cs.multi_label:
        folds = list(KFold(k, shuffle=True, random_state=seed).split(X))
    else:
        counts = np.bincount(y, minlength=len(classes))
        if len(np.flatnonzero(counts)) < 2:
            raise UserError(f"{cs.path}: its labelled images are of one class: nothing to tell apart")
        small = [cs.class_names[c] for c in np.flatnonzero((counts > 0) & (counts < k))]
        if small:
            logger.info(f"note: {len(small)} class(es) have fewer than {k} images ({', '.join(small[:3])}"
                        f"{' ...' if len(small) > 3 else ''}): some folds test none of their images")
        with warnings.catch_warnings():  # (said above in one line)
            warnings.simplefilter("ignore", UserWarning)
            folds = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y))
    logger.info(f"{k}-fold cross-validation over the {n} labelled images of {cs.path} (the stored split is not "
                f"used: each image is tested once, by the head of the fold that did not train on it)")
    proba = np.zeros((n, len(classes)))
    thresholds = np.zeros((n, len(classes))) if cs.multi_label else None
    scores = []
    t0 = time.perf_counter()
    bar = tqdm(total=k + 1, desc=f"{k}-fold {head}", unit="fit", disable=None)
    for fit_on, test_on in folds:
        model = make_head(head, **head_params).fit(X[fit_on], y[fit_on], classes=classes)
        proba[test_on] = model.predict_proba(X[test_on])
        if cs.multi_label:
            thresholds[test_on] = model.thresholds_  # each image decided by its own fold's thresholds
            scores.append(evaluate_multi_label(y[test_on], proba[test_on], model.thresholds_, cs.class_names)["mAP"])
        else:
            scores.append(float((proba[test_on].argmax(1) == y[test_on]).mean()))
        bar.update()
    cv_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = make_head(head, **head_params).fit(X, y, classes=classes)
    seconds = time.perf_counter() - t0
    bar.update()
    bar.close()
    scored = np.array([s for s in scores if s is not None], float)
    what = "mAP" if cs.multi_label else "accuracy"
    if cs.multi_label:
        pooled = evaluate_multi_label(y, proba, thresholds, cs.class_names)
        ci = pooled.get("mAP_ci") or [float("nan")] * 2
    else:
        ci = wilson(int((proba.argmax(1) == y).sum()), n)
    logger.info(f"{k}-fold {what} {scored.mean():.4f} ± {scored.std():.4f} over {k} folds, "
                f"95% CI [{ci[0]:.4f}, {ci[1]:.4f}] ({n} images, {cv_seconds:.1f} s)")
    title = _title(cs, head)
    record = {
        "title": f"{title} ({k}-fold cross-validation)", "kind": "head-on-codes", "head": head,
        "head_params": head_params, "codes": str(Path(cs.path)),
        "code_attrs": {key: str(v) for key, v in cs.attrs.items()},
        "n_train": n, "n_val": 0, "n_test": n, "test_paths": paths, "train_seconds": round(seconds, 3),
        "out_of_core": False, "split_digest": cs.split_digest(),
        "cv": {"folds": k, "seed": seed, "metric": what, "fold_scores": [None if s is None else float(s) for s in scores],
               "mean": float(scored.mean()), "std": float(scored.std()), "ci": [float(c) for c in ci],
               "seconds": round(cv_seconds, 3)},
    }
    if cs.multi_label:  # (each image was decided by its fold's thresholds; the saved head decides by its own)
        record["thresholds"] = [float(t) for t in model.thresholds_]
    return finish_run(runs_dir, f"{cs.attrs.get('backbone')}-{head}", record=record, save=model.save,
                      tested=Tested(y, proba, cs.class_names, paths, cs.data_root, positive_class,
                                    thresholds if cs.multi_label else None),
                      history=model.history_, train_paths=paths,
                      detail=f"out of fold, {k}-fold cross-validation in {cv_seconds:.1f} s; the head saved trained "
                             f"in {seconds:.1f} s on {n} codes of {X.shape[1]} values (every labelled image)")
