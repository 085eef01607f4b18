"""Train one head on one cached code set, evaluate it on the stored test split, save a run."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from pipeline._files import writable_folder
from pipeline._records import Run
from pipeline.codes import JoinedCodeSet, open_code_sets
from pipeline.codes._codeset import CodeStream
from pipeline.data import TEST, TRAIN, VAL
from pipeline.errors import ParameterError, UserError, check_seed
from pipeline.heads import make_head
from pipeline.reports import positive_index
from pipeline.runs._folders import finish_run

logger = logging.getLogger(__name__)


def default_memory_limit() -> int:
    """Half of this machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def train(codes, head="logreg", *, runs_dir="runs", positive_class=None, memory_limit=None, **head_params) -> Run:
    """Fit ``head`` (with ``head_params``, the head's own parameters: ``epochs``, ``Cs``, ...) on
    the train part of a code set (validation part for model selection),
    evaluate on its test part and write a run folder. Returns its :class:`Run`. ``codes``: a code
    file, a :class:`~pipeline.codes.CodeSet`, or a list of code files (or paths joined by ``+``):
    trains on their codes side by side, rows matched by image
    path (:class:`~pipeline.codes.JoinedCodeSet`).

    Codes that take more than ``memory_limit`` bytes as float32 (default: half the RAM) are
    not loaded: the head is trained on them streamed from the file, a few blocks in memory at a
    time (:class:`~pipeline.codes._codeset.CodeStream`), with a note saying so."""
    check_seed(head_params.get("seed"))
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
    title = f"{head} on {cs.attrs.get('backbone')} {cs.attrs.get('layer')}/{cs.attrs.get('pooling')}"
    record = {
        "title": title, "kind": "head-on-codes", "head": head, "head_params": head_params,
        "codes": str(Path(codes_path)), "code_attrs": {k: str(v) for k, v in cs.attrs.items()},
        "n_train": int(len(y_tr)), "n_val": int(len(y_va)), "n_test": int(len(y_te)),
        "test_paths": [p for p, s in zip(cs.paths, cs.split) if s == TEST], "train_seconds": round(seconds, 3),
        "out_of_core": not isinstance(X_tr, np.ndarray), "split_digest": cs.split_digest(),
    }
    return finish_run(runs_dir, f"{cs.attrs.get('backbone')}-{head}", record=record, y_true=y_te,
                      proba=model.predict_proba(X_te), class_names=cs.class_names, save=model.save,
                      test_paths=record["test_paths"], data_root=cs.data_root,
                      positive_class=positive_class, history=model.history_,
                      thresholds=getattr(model, "thresholds_", None),
                      detail=f"trained in {seconds:.1f} s on {len(y_tr)} codes of {X_tr.shape[1]} values")
