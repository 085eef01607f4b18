"""Train one head on one cached code set, evaluate it on the stored test split, save a run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .codeset import CodeSet
from .dataset import TEST, TRAIN, VAL
from .errors import UserError, writable_folder
from .heads import make_head
from .report import positive_index
from .runs import finish_run


def train_on_codes(codes_path, head="softmax", head_params=None, runs_dir="runs", positive_class=None, log=print):
    """Fit ``head`` on the train part of a code file (validation part for model selection),
    evaluate on its test part and write a run folder. Returns (run_dir, metrics)."""
    writable_folder(runs_dir, "--runs-dir")
    cs = CodeSet.load(codes_path)
    X_tr, y_tr = cs.part(TRAIN)
    X_va, y_va = cs.part(VAL)
    X_te, y_te = cs.part(TEST)
    if len(X_te) == 0 or len(np.unique(y_tr)) < 2:
        raise UserError(f"{codes_path}: the stored split has no test images or fewer than two training classes")
    positive_index(cs.class_names, positive_class)  # checked before training
    model = make_head(head, **(head_params or {}))
    t0 = time.perf_counter()
    model.fit(X_tr, y_tr, validation_data=(X_va, y_va) if len(X_va) else None,
              classes=np.arange(len(cs.class_names)))
    seconds = time.perf_counter() - t0
    title = f"{head} on {cs.attrs.get('backbone')} {cs.attrs.get('layer')}/{cs.attrs.get('pooling')}"
    record = {
        "title": title, "kind": "head-on-codes", "head": head, "head_params": head_params or {},
        "codes": str(Path(codes_path)), "code_attrs": {k: str(v) for k, v in cs.attrs.items()},
        "n_train": int(len(y_tr)), "n_val": int(len(y_va)), "n_test": int(len(y_te)),
        "test_paths": [p for p, s in zip(cs.paths, cs.split) if s == TEST], "train_seconds": round(seconds, 3),
    }
    return finish_run(runs_dir, f"{cs.attrs.get('backbone')}-{head}", record=record, y_true=y_te,
                      proba=model.predict_proba(X_te), class_names=cs.class_names, save=model.save,
                      positive_class=positive_class, history=model.history_,
                      detail=f"trained in {seconds:.1f} s on {len(y_tr)} codes of {X_tr.shape[1]} values", log=log)
