"""Stage 2's registry of heads (name -> class), and a saved head read back whole (load_head).

The heads, one module per family: _keras.py (softmax, MLP), _logreg.py, _prototype.py; what they
share: _base.py. Each head is trained on cached codes, scikit-learn style (fit / predict_proba).

Every head is a scikit-learn estimator (``clone``, ``GridSearchCV`` and ``cross_val_score`` work)
on codes ``X`` of shape (n_images, n_values). ``validation_data``, when given, drives early
stopping (Keras heads) or the choice of the regularization strength (logistic regression).

Multi-label: ``y`` of shape (n_images, n_labels), 0/1. Each head then gives one independent
probability per label (logistic regression one-vs-rest, sigmoid outputs and binary cross-entropy
for the Keras heads, a prototype per label), and a threshold per label, chosen on the validation
codes for the best F1, decides which labels an image has (``predict``); both are saved with the head.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline._checked import Fraction, Name, Schema, read_checked
from pipeline.errors import UserError, one_line

from pipeline.heads._keras import KerasHead, MLPHead, SoftmaxHead
from pipeline.heads._logreg import LogRegHead
from pipeline.heads._prototype import PrototypeHead


# a head's parameters and state as its description stores them
Param = bool | int | float | str | None | list[bool | int | float | str]

class HeadDescription(Schema):
    """``head.json``: which head, its parameters, its classes and state (arrays: head.npz or head.keras)."""

    head: Literal[("softmax", "mlp", "logreg", "prototype")]
    params: dict[Name, Param] = {}
    classes: Annotated[list[Annotated[int, Field(ge=0, le=10**7)]], Field(min_length=1)] | None = None
    n_features_in: Annotated[int, Field(ge=1, le=10**8)] | None = None
    state: dict[Name, Param] = {}
    history: dict[Name, Any] = {}
    multi_label: bool = False
    thresholds: list[Fraction] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if (self.classes is None) != (self.n_features_in is None):
            raise ValueError("classes and n_features_in go together")
        if self.multi_label and (self.thresholds is None or self.classes is None
                                 or len(self.thresholds) != len(self.classes)):
            raise ValueError("a multi-label head needs thresholds, one per label")
        return self


HEADS = {"softmax": SoftmaxHead, "mlp": MLPHead, "logreg": LogRegHead, "prototype": PrototypeHead}


def make_head(name: str, **params):
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    try:
        return HEADS[name](**params)
    except TypeError as exc:
        raise UserError(f"{name} head: {exc}") from None


def load_head(folder):
    """Load a head saved by ``save`` from a run folder: the same class with the same parameters.

    Nothing in the folder is executed: arrays and JSON only, Keras files in safe mode. A
    ``head.joblib`` (a pickle, written by version 0.1.0 before this) is refused, not loaded.
    Every file is checked (:class:`HeadDescription`, finite arrays) and the head is tried on
    one code before it is returned: whatever is off is one :class:`UserError` naming the file.
    """
    folder = Path(folder)
    where = f"{folder}/head.json"
    if (folder / "head.json").exists():
        desc = read_checked(folder / "head.json", HeadDescription, "head description", max_bytes=64 << 20)
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in desc.params.items()}
        try:
            head = HEADS[desc.head](**params)
            head._check_params()
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: parameters do not fit the {desc.head} head ({one_line(exc)})") from None
        head.history_ = desc.history
        state = desc.state
    elif (folder / "head.keras").exists():  # written before head.json: a Keras head, parameters unknown
        head, desc, state = SoftmaxHead(), HeadDescription(head="softmax"), {}
        head.history_ = {}
    elif (folder / "head.joblib").exists():
        raise UserError(f"{folder}/head.joblib is a pickle written by an older version; loading it could run any "
                        f"code it holds, so it is not loaded: train the head again (make train)")
    else:
        raise UserError(f"{folder} holds no saved head (head.json with head.keras or head.npz)")
    head.multi_label_ = desc.multi_label
    try:
        head._restore(folder, state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UserError(f"{where}: its state does not fit the {desc.head} head ({one_line(exc)})") from None
    if desc.classes is not None:
        head.classes_, head.n_features_in_ = np.asarray(desc.classes), desc.n_features_in
        if head.multi_label_:
            head.thresholds_ = np.asarray(desc.thresholds, np.float64)
    elif isinstance(head, KerasHead):  # a Keras head written before head.json: its layers say
        head.classes_ = np.arange(head.model_.output_shape[-1])
        head.n_features_in_ = int(head.model_.input_shape[-1])
    else:
        raise UserError(f"{where} was written by an older version: train the head again")
    _check_shapes(head, folder)
    _try_once(head, folder)
    return head


def _check_shapes(head, folder) -> None:
    """Each saved array of the shape the head's description implies (D values in, K classes)."""
    d, k = head.n_features_in_, len(head.classes_)
    if isinstance(head, LogRegHead):
        scaler, clf = head.model_[0], head.model_[-1]
        trained = np.asarray(clf.classes_)  # single-label: the classes seen in training (a subset)
        if trained.ndim != 1 or len(np.unique(trained)) != len(trained) or not np.isin(trained, np.arange(k)).all():
            raise UserError(f"{folder}/head.npz: classes are not distinct class numbers below {k}")
        m = len(trained)
        rows = 1 if m == 2 and not head.multi_label_ else m
        want = {"mean": (scaler.mean_, (d,)), "var": (scaler.var_, (d,)), "scale": (scaler.scale_, (d,)),
                "coef": (clf.coef_, (rows, d)), "intercept": (clf.intercept_, (rows,))}
    elif isinstance(head, PrototypeHead):
        want = {"mean": (head.mean_, (d,)), "prototypes": (head.prototypes_, (k, d)), "present": (head.present_, (k,))}
    else:
        want = {}
    for name, (array, shape) in want.items():
        if np.shape(array) != shape:
            raise UserError(f"{folder}/head.npz: {name} is {np.shape(array)}, not {shape} "
                            f"({d} code values, {k} classes in head.json)")


def _try_once(head, folder) -> None:
    """Probabilities for one code of zeros, one per class: arrays whose shapes do not fit each
    other or the description are found here, not in a command halfway through its work."""
    try:
        p = head.predict_proba(np.zeros((1, head.n_features_in_), np.float32))
        ok = p.shape == (1, len(head.classes_))
    except Exception as exc:  # any library's error on arrays that do not fit: the files are wrong
        raise UserError(f"{folder}: its head files do not fit each other ({one_line(exc)})") from None
    if not ok:
        raise UserError(f"{folder}: its head gives {p.shape[-1]} probabilities for {len(head.classes_)} classes")
