"""What every head shares: the estimator base class (fit, predict, save), validation splits,
multi-label thresholds, parameter checks and the reading of saved arrays."""

import json
import zipfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline.codes import CodeStream
from pipeline.errors import ParameterError, UserError, check_seed, one_line

# Deferred on purpose: scikit-learn, Keras are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.



def holdout(X, y, X_val, y_val, fraction=0.1, seed=0):
    """(X, y, X_val, y_val) with a validation set: the given one, else a stratified ``fraction``
    of the training codes held out (when every class has two or more), else none (None, None)."""
    if X_val is not None and len(X_val):
        return X, y, X_val, y_val
    counts = np.bincount(y)
    counts = counts[counts > 0]
    n_val = int(round(fraction * len(y)))
    if len(counts) == 0 or counts.min() < 2 or n_val < len(counts):
        return X, y, None, None
    from sklearn.model_selection import train_test_split
    fit_idx, val_idx = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)
    return X[fit_idx], y[fit_idx], X[val_idx], y[val_idx]


def best_f1_thresholds(Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Per label, the probability threshold with the best F1 on (Y, P); 0.5 for a label with no
    positive among them (nothing to choose it on)."""
    from sklearn.metrics import precision_recall_curve

    out = np.full(Y.shape[1], 0.5)  # float64: the probabilities themselves, compared with >=
    for j in range(Y.shape[1]):
        if 0 < Y[:, j].sum():
            precision, recall, thresholds = precision_recall_curve(Y[:, j], P[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            out[j] = thresholds[int(np.argmax(f1))]
    return out


def read_thresholds(values, n_labels: int, source) -> np.ndarray:
    """A multi-label head's thresholds as a file states them (a head.json, a model's metadata):
    ``n_labels`` numbers from 0 to 1, or a :class:`UserError` naming ``source``."""
    try:
        out = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        out = None
    if out is None or out.shape != (n_labels,) or not np.all((out >= 0) & (out <= 1)):
        raise UserError(f"{source}: the thresholds of its labels are not {n_labels} numbers from 0 to 1")
    return out


def _sigmoid(z):
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)


def _is_stream(X) -> bool:
    return isinstance(X, CodeStream)


def _keras_seed(seed: int) -> None:
    import keras
    keras.utils.set_random_seed(seed)


class HeadParameterError(UserError, ValueError):
    """A head parameter out of range: a ValueError for scikit-learn, one line for the CLI."""


def _is_seed(seed) -> bool:
    try:
        check_seed(seed)
    except ParameterError:
        return False
    return True


def _require(ok: bool, name: str, rule: str, value) -> None:
    if not ok:
        raise HeadParameterError(f"{name} must be {rule} (got {value!r})")


class _Head(ClassifierMixin, BaseEstimator):
    """What every head shares, scikit-learn style: ``__init__`` stores the parameters; ``fit``
    checks them and learns ``classes_``, ``n_features_in_`` and the model; ``predict_proba``
    columns follow ``classes_``. ``fit(..., classes=...)`` names classes beyond those in ``y``
    (a draw of a few images per class may miss some); they get probability 0."""

    name = ""

    def fit(self, X, y, *, validation_data=None, classes=None):
        from sklearn.utils.validation import check_array, check_X_y

        self._check_params()
        streamed = _is_stream(X)  # more codes than memory allows: read from the file as needed
        self.multi_label_ = np.ndim(X.y if streamed else y) == 2
        if self.multi_label_:
            if streamed:
                raise HeadParameterError("a multi-label head is trained in memory: raise --memory-limit")
            return self._fit_multi_label(X, y, validation_data, classes)
        if streamed:
            y = X.y
        else:
            X, y = check_X_y(X, y, dtype=np.float32)
        self.classes_ = np.unique(y) if classes is None else np.asarray(classes)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise HeadParameterError(f"classes: y has labels {unknown.tolist()} that classes does not name")
        self.n_features_in_ = X.shape[1]
        self.history_ = {}
        if streamed:
            has_val = validation_data is not None and len(validation_data[0])
            self._fit_stream(X, validation_data[0] if has_val else None)
            return self
        X_val = y_val = None
        if validation_data is not None and len(validation_data[0]):
            X_val = check_array(validation_data[0], dtype=np.float32)
            y_val = np.searchsorted(self.classes_, np.asarray(validation_data[1]))
        self._fit(X, np.searchsorted(self.classes_, y), X_val, y_val)
        return self

    def _fit_stream(self, stream, val):
        raise HeadParameterError(f"the {self.name} head cannot be trained out of core")

    def _fit_multi_label(self, X, Y, validation_data, classes):
        from sklearn.utils.validation import check_array

        X = check_array(X, dtype=np.float32)
        Y = (check_array(Y, ensure_2d=True) > 0).astype(np.float32)
        if len(Y) != len(X):
            raise HeadParameterError(f"y has {len(Y)} rows for {len(X)} codes")
        self.classes_ = np.arange(Y.shape[1]) if classes is None else np.asarray(classes)
        if len(self.classes_) != Y.shape[1]:
            raise HeadParameterError(f"classes names {len(self.classes_)} labels, y has {Y.shape[1]} columns")
        self.n_features_in_ = X.shape[1]
        self.history_ = {}
        X_val = Y_val = None
        if validation_data is not None and len(validation_data[0]):
            X_val = check_array(validation_data[0], dtype=np.float32)
            Y_val = (np.asarray(validation_data[1]) > 0).astype(np.float32)
        self._fit_multi(X, Y, X_val, Y_val)
        self.thresholds_ = (best_f1_thresholds(Y_val, self._proba(X_val)) if X_val is not None
                            else np.full(Y.shape[1], 0.5))
        return self

    def _fit_multi(self, X, Y, X_val, Y_val):
        raise HeadParameterError(f"the {self.name} head has no multi-label form")

    def predict_proba(self, X) -> np.ndarray:
        """(n_images, len(classes_)) class probabilities (``X`` may be a streamed code set)."""
        from sklearn.utils.validation import check_array, check_is_fitted
        check_is_fitted(self)
        if _is_stream(X):
            parts = [self._proba(b) for b in X.blocks()]
            return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)
        return self._proba(check_array(X, dtype=np.float32))

    def predict(self, X) -> np.ndarray:
        """Classes; multi-label: (n_images, n_labels) 0/1, each label at or above its threshold."""
        if getattr(self, "multi_label_", False):
            return (self.predict_proba(X) >= self.thresholds_).astype(np.int64)
        return self.classes_[self.predict_proba(X).argmax(1)]

    def save(self, folder: Path) -> Path:
        """The head's arrays and ``head.json`` (its class, parameters, classes): no pickle, so that
        loading a run folder someone shares cannot run code."""
        path = self._save_model(Path(folder))
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()}
        (Path(folder) / "head.json").write_text(json.dumps(
            {"head": self.name, "params": params, "classes": self.classes_.tolist(),
             "n_features_in": int(self.n_features_in_), "state": self._state(), "history": self.history_,
             **({"multi_label": True, "thresholds": [float(t) for t in self.thresholds_]}
                if getattr(self, "multi_label_", False) else {})},
            indent=2))
        return path

    def _state(self) -> dict:
        return {}




def _load_arrays(folder) -> dict:
    """The arrays of ``head.npz``: numbers only (no pickle), finite."""
    path = Path(folder) / "head.npz"
    if not path.is_file():
        raise UserError(f"{path} is not a saved head: not a regular file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a saved head ({one_line(exc)})") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf" or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise UserError(f"{path}: {k} is not an array of finite numbers")
    return arrays


def _arrays(folder, *names) -> list:
    arrays = _load_arrays(folder)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UserError(f"{Path(folder) / 'head.npz'} is not a saved head: it has no {missing[0]}")
    return [arrays[n] for n in names]
