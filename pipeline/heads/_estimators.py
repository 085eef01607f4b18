"""Stage 2: classifier heads trained on cached codes, scikit-learn style (fit / predict_proba).

Every head is a scikit-learn estimator (``clone``, ``GridSearchCV`` and ``cross_val_score`` work)
on codes ``X`` of shape (n_images, n_values). ``validation_data``, when given, drives early
stopping (Keras heads) or the choice of the regularization strength (logistic regression).

Multi-label: ``y`` of shape (n_images, n_labels), 0/1. Each head then gives one independent
probability per label (logistic regression one-vs-rest, sigmoid outputs and binary cross-entropy
for the Keras heads, a prototype per label), and a threshold per label, chosen on the validation
codes for the best F1, decides which labels an image has (``predict``); both are saved with the head.
"""
from __future__ import annotations

import copy
import json
import warnings
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator
from sklearn.base import BaseEstimator, ClassifierMixin

from pipeline._checked import Fraction, Name, Schema, read_checked
from pipeline.codes import CodeStream
from pipeline.errors import ParameterError, UserError, check_seed, one_line
from pipeline.heads._scaling import (
    ShrunkScaler,
    standardization,
    streaming_standardization,
)
from pipeline.heads._trainloop import Schedule, class_weights, train_in_memory, train_streamed

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


class KerasHead(_Head):
    """Shared machinery of the Keras heads: a standardization layer set from the training
    codes, optional hidden layers, a softmax output; Adam; early stopping on validation loss,
    best weights restored. Without a validation set, 10% of the training codes are held out for
    it (stratified; on training loss where a class has a single image). An epoch counts
    as better only if the loss drops by ``min_delta``: without it, small training sets creep on
    for a hundred epochs for a few hundredths of a point."""

    def _hidden(self) -> tuple:
        return ()

    def _check_params(self):
        for name in ("epochs", "batch_size"):
            _require(int(getattr(self, name)) == getattr(self, name) and getattr(self, name) >= 1, name,
                     "a whole number >= 1", getattr(self, name))
        _require(0 < self.learning_rate < np.inf, "learning_rate", "a finite number > 0", self.learning_rate)
        _require(0 <= self.dropout < 1, "dropout", "in [0, 1)", self.dropout)
        _require(self.patience >= 0, "patience", ">= 0", self.patience)
        _require(0 <= self.min_delta < np.inf, "min_delta", "a finite number >= 0", self.min_delta)
        _require(_is_seed(self.seed), "seed", "a whole number from 0 to 2**32 - 1", self.seed)
        _require(all(int(h) == h and h >= 1 for h in self._hidden()), "hidden", "whole numbers >= 1",
                 getattr(self, "hidden", None))

    def _build(self, X, n_classes, stats=None, l2=0.0, multi_label=False):
        import keras

        mean, var = stats if stats is not None else standardization(X)
        # Codes of any scale (a random-weight base gives values near 1e-13): scaled to about 1
        # first, or Normalization's floor on the standard deviation (1e-7) would flatten them.
        scale = float(1.0 / np.sqrt(max(float(np.mean(var)), 1e-300)))
        scale = scale if abs(np.log10(scale)) > 2 else 1.0
        norm = keras.layers.Normalization(name="standardize")
        norm.build((None, len(mean)))
        norm.set_weights([mean * scale, var * scale ** 2, np.asarray(len(X))])
        norm.finalize_state()
        inputs = keras.Input((len(mean),), name="codes")
        x = norm(keras.layers.Rescaling(scale, name="scale")(inputs) if scale != 1.0 else inputs)
        for i, units in enumerate(self._hidden()):
            x = keras.layers.Dense(int(units), activation="relu", name=f"hidden{i + 1}")(x)
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, name=f"dropout{i + 1}")(x)
        if not self._hidden() and self.dropout:
            x = keras.layers.Dropout(self.dropout, name="dropout")(x)
        activation = "sigmoid" if multi_label else "softmax"
        outputs = keras.layers.Dense(n_classes, activation=activation, name=activation,
                                     kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)(x)
        model = keras.Model(inputs, outputs, name="head")
        model.compile(keras.optimizers.Adam(self.learning_rate),
                      "binary_crossentropy" if multi_label else "sparse_categorical_crossentropy",
                      metrics=["binary_accuracy" if multi_label else "accuracy"])
        return model

    def _fit_multi(self, X, Y, X_val, Y_val):
        """Sigmoid outputs, binary cross-entropy; early stopping on the validation loss (10% of
        the training codes held out when none is given), best weights restored."""
        import keras

        _keras_seed(self.seed)
        if X_val is None and len(X) >= 20:
            rng = np.random.default_rng(self.seed)
            held = rng.permutation(len(X))[:max(1, len(X) // 10)]
            keep = np.setdiff1d(np.arange(len(X)), held)
            X, Y, X_val, Y_val = X[keep], Y[keep], X[held], Y[held]
        self.model_ = self._build(X, Y.shape[1], multi_label=True)
        stop = keras.callbacks.EarlyStopping("val_loss" if X_val is not None else "loss", patience=self.patience,
                                             min_delta=self.min_delta, restore_best_weights=True)
        fit = self.model_.fit(X, Y, validation_data=(X_val, Y_val) if X_val is not None else None,
                              epochs=self.epochs, batch_size=self.batch_size, callbacks=[stop],
                              verbose=self.verbose, shuffle=True)
        self.history_ = {k.replace("binary_accuracy", "accuracy"): [float(v) for v in vals]
                         for k, vals in fit.history.items()}

    def _fit(self, X, y, X_val, y_val):
        import keras

        _keras_seed(self.seed)
        n_classes = len(self.classes_)
        X, y, X_val, y_val = holdout(X, y, X_val, y_val, seed=self.seed)
        self.model_ = self._build(X, n_classes)
        has_val = X_val is not None and len(X_val)
        dense = [layer for layer in self.model_.layers if isinstance(layer, keras.layers.Dense)]
        self.history_ = train_in_memory(
            dense, self._standardize(X), y, self._standardize(X_val) if has_val else None, y_val,
            Schedule(self.epochs, self.learning_rate, self.batch_size, self.patience, self.min_delta, self.dropout,
                     self.seed, self.verbose),
            sample_weight=class_weights(y, n_classes)[y] if self.class_weight else None)

    def _standardize(self, X) -> np.ndarray:
        """What the model's scaling and standardization layers make of codes ``X``."""
        if any(layer.name == "scale" for layer in self.model_.layers):
            X = self.model_.get_layer("scale")(X)
        return np.asarray(self.model_.get_layer("standardize")(X))

    def _fit_stream(self, stream, val):
        _keras_seed(self.seed)
        self.model_ = self._build(stream, len(self.classes_), stats=streaming_standardization(stream.blocks()))
        self.history_ = train_streamed(
            self.model_, stream, val, classes=self.classes_, epochs=self.epochs, batch_size=self.batch_size,
            patience=self.patience, min_delta=self.min_delta, seed=self.seed, class_weight=self.class_weight,
            verbose=self.verbose)

    def _proba(self, X) -> np.ndarray:
        if not len(X):
            return np.zeros((0, len(self.classes_)), np.float32)
        return np.concatenate([np.asarray(self.model_(X[s:s + 4096], training=False))
                               for s in range(0, len(X), 4096)])

    def to_keras(self):
        """This head as a Keras model, codes -> probabilities."""
        return self.model_

    def _save_model(self, folder: Path) -> Path:
        path = folder / "head.keras"
        self.model_.save(path)
        return path

    def _restore(self, folder: Path, state: dict) -> None:
        import keras
        if not (Path(folder) / "head.keras").is_file():
            raise UserError(f"{folder}/head.keras is not a saved head: not a regular file")
        try:  # safe mode: a Lambda layer (Python bytecode) in a shared file is refused, not run
            self.model_ = keras.saving.load_model(Path(folder) / "head.keras", compile=False, safe_mode=True)
        except Exception as exc:
            raise UserError(f"{folder}/head.keras was not loaded: {one_line(exc)}") from None


class SoftmaxHead(KerasHead):
    """One Dense softmax layer on standardized codes (the classic recipe on CNN codes)."""

    name = "softmax"

    def __init__(self, epochs=200, learning_rate=3e-3, batch_size=256, patience=5, min_delta=0.002, dropout=0.0,
                 class_weight=False, seed=0, verbose=0):
        self.epochs, self.learning_rate, self.batch_size = epochs, learning_rate, batch_size
        self.patience, self.min_delta, self.dropout = patience, min_delta, dropout
        self.class_weight, self.seed, self.verbose = class_weight, seed, verbose


class MLPHead(KerasHead):
    """Dense 256 + ReLU + Dropout 0.5 + softmax by default; ``hidden`` sets the layer sizes."""

    name = "mlp"

    def __init__(self, hidden=(256,), dropout=0.5, epochs=200, learning_rate=3e-3, batch_size=256, patience=5,
                 min_delta=0.002, class_weight=False, seed=0, verbose=0):
        self.hidden, self.dropout = hidden, dropout
        self.epochs, self.learning_rate, self.batch_size = epochs, learning_rate, batch_size
        self.patience, self.min_delta = patience, min_delta
        self.class_weight, self.seed, self.verbose = class_weight, seed, verbose

    def _hidden(self) -> tuple:
        return tuple(self.hidden)


class LogRegHead(_Head):
    """scikit-learn multinomial logistic regression (L-BFGS) on standardized codes.

    The inverse regularization strength C is chosen from ``Cs`` by accuracy on the validation
    set (fits along increasing C warm-start from the previous one). Without a validation set,
    10% of the training codes are held out to choose C, then the model is refit on all of them;
    where a class has a single image, or only one C is given, the largest C is used.
    """

    name = "logreg"

    def __init__(self, Cs=(0.001, 0.01, 0.1, 1.0), max_iter=300, class_weight=False, seed=0, verbose=0):
        self.Cs, self.max_iter, self.class_weight, self.seed, self.verbose = Cs, max_iter, class_weight, seed, verbose

    def _check_params(self):
        _require(len(self.Cs) > 0 and all(0 < c < np.inf for c in self.Cs), "Cs", "one or more finite numbers > 0",
                 self.Cs)
        _require(_is_seed(self.seed), "seed", "a whole number from 0 to 2**32 - 1", self.seed)
        _require(self.max_iter >= 1, "max_iter", ">= 1", self.max_iter)

    def _pipe(self, C):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        return make_pipeline(ShrunkScaler(), LogisticRegression(
            C=C, max_iter=self.max_iter, class_weight="balanced" if self.class_weight else None,
            random_state=self.seed))

    def _fit(self, X, y, X_val, y_val):

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")
            X_fit, y_fit, X_val, y_val = holdout(X, y, X_val, y_val, seed=self.seed)
            best, scores, best_model = max(self.Cs), {}, None
            if X_val is not None and len(self.Cs) > 1:
                # Along increasing C, each fit starts from the previous solution (warm start).
                pipe = self._pipe(min(self.Cs))
                pipe.named_steps["logisticregression"].warm_start = True
                for C in sorted(self.Cs):
                    pipe.set_params(logisticregression__C=C).fit(X_fit, y_fit)
                    scores[C] = float((pipe.predict(X_val) == y_val).mean())
                    if best_model is None or scores[C] > scores[best]:  # ties: stronger regularization
                        best, best_model = C, copy.deepcopy(pipe)
                self.history_ = {"val_accuracy_by_C": {str(c): v for c, v in scores.items()}}
            if X_fit is X and best_model is not None:  # the given validation set: keep the model fitted with the best C
                best_model.named_steps["logisticregression"].warm_start = False
                self.model_ = best_model
            else:  # held-out part of the training codes (or no choice at all): refit on everything
                self.model_ = self._pipe(best).fit(X, y)
            self.C_ = best

    def _fit_multi(self, X, Y, X_val, Y_val):
        """One-vs-rest: a binary logistic regression per label on the standardized codes, C chosen
        from ``Cs`` by mean average precision on the validation codes (the largest C without).
        A label that is always (or never) present gets a constant probability."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import average_precision_score

        scaler = ShrunkScaler().fit(X)
        Z = scaler.transform(X)
        Z_val = scaler.transform(X_val) if X_val is not None else None

        def fit(C):
            coef, intercept = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
            for j in range(Y.shape[1]):
                if Y[:, j].min() == Y[:, j].max():
                    intercept[j] = 8.0 if Y[0, j] else -8.0
                    continue
                clf = LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed,
                                         class_weight="balanced" if self.class_weight else None).fit(Z, Y[:, j])
                coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
            return coef, intercept

        scored = [j for j in range(Y.shape[1]) if Y_val is not None and 0 < Y_val[:, j].sum() < len(Y_val)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if scored and len(self.Cs) > 1:
                scores, fits = {}, {}
                for C in sorted(self.Cs):
                    fits[C] = fit(C)
                    P = _sigmoid(Z_val @ fits[C][0].T + fits[C][1])
                    scores[C] = float(np.mean([average_precision_score(Y_val[:, j], P[:, j]) for j in scored]))
                best = max(sorted(self.Cs), key=lambda c: scores[c])  # ties: stronger regularization
                coef, intercept = fits[best]
                self.history_ = {"val_mAP_by_C": {str(c): v for c, v in scores.items()}}
            else:
                best = max(self.Cs)
                coef, intercept = fit(best)
        self.C_ = best
        self.model_ = self._pipe(best)
        clf = self.model_[-1]
        self.model_.steps[0] = (self.model_.steps[0][0], scaler)
        clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, np.arange(Y.shape[1])
        clf.n_features_in_ = X.shape[1]
        clf.n_iter_ = np.asarray([0])

    def _fit_stream(self, stream, val):
        """Out of core: the same multinomial model (softmax of a linear function of standardized
        codes, L2 penalty 1 / (C n)) fitted by minibatch gradient descent on the streamed codes,
        with C the largest of ``Cs`` (no search: each C would be another pass over the data).
        It is then held as the scikit-learn pipeline the in-memory fit gives, so saving,
        exporting and predicting are the same."""
        _keras_seed(self.seed)
        n_classes, C = len(self.classes_), max(self.Cs)
        stats = streaming_standardization(stream.blocks())
        linear = SoftmaxHead(learning_rate=1e-3, batch_size=256, epochs=min(self.max_iter, 30), patience=3,
                             min_delta=1e-4, seed=self.seed)
        model = linear._build(stream, n_classes, stats=stats, l2=1.0 / (2 * C * len(stream)))
        self.history_ = train_streamed(
            model, stream, val, classes=self.classes_, epochs=linear.epochs, batch_size=linear.batch_size,
            patience=linear.patience, min_delta=linear.min_delta, seed=self.seed, class_weight=self.class_weight,
            verbose=self.verbose)
        W, b = model.get_layer("softmax").get_weights()
        present = np.searchsorted(self.classes_, np.unique(stream.y))  # positions, as the in-memory fit has
        coef, intercept = W.T[present].astype(np.float64), b[present].astype(np.float64)
        if len(present) == 2:  # scikit-learn's binary form: sigmoid(z1 - z0) == softmax([z0, z1])[1]
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self.C_ = C
        self.model_ = self._pipe(C)
        scaler, clf = self.model_[0], self.model_[-1]
        scaler.mean_, scaler.var_ = stats
        scaler.scale_ = np.sqrt(stats[1])
        scaler.n_features_in_ = clf.n_features_in_ = stream.shape[1]
        scaler.n_samples_seen_ = len(stream)
        clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, present
        clf.n_iter_ = np.asarray([len(self.history_["loss"])])

    def _proba(self, X) -> np.ndarray:
        if getattr(self, "multi_label_", False):
            scaler, clf = self.model_[0], self.model_[-1]
            return _sigmoid(scaler.transform(X) @ clf.coef_.T + clf.intercept_) if len(X) else np.zeros(
                (0, len(self.classes_)), np.float32)
        out = np.zeros((len(X), len(self.classes_)), np.float32)
        if len(X):
            out[:, self.model_.classes_] = self.model_.predict_proba(X)  # classes absent from training: 0
        return out

    def to_keras(self):
        """One Dense softmax layer (multi-label: sigmoid) with the standardization folded into its weights."""
        import keras

        scaler, clf = self.model_[0], self.model_[-1]
        coef, intercept = clf.coef_, clf.intercept_
        if getattr(self, "multi_label_", False):
            scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
            inputs = keras.Input((self.n_features_in_,), name="codes")
            dense = keras.layers.Dense(len(self.classes_), activation="sigmoid", name="sigmoid")
            model = keras.Model(inputs, dense(inputs), name="head")
            dense.set_weights([(coef / scale).T.astype(np.float32),
                               (intercept - (coef / scale) @ scaler.mean_).astype(np.float32)])
            return model
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
        n_classes = len(self.classes_)
        W = np.zeros((self.n_features_in_, n_classes), np.float32)
        b = np.full(n_classes, -1e4, np.float32)  # classes never seen in training: probability 0
        W[:, clf.classes_] = (coef / scale).T
        b[clf.classes_] = intercept - (coef / scale) @ scaler.mean_
        inputs = keras.Input((self.n_features_in_,), name="codes")
        dense = keras.layers.Dense(n_classes, activation="softmax", name="softmax")
        model = keras.Model(inputs, dense(inputs), name="head")
        dense.set_weights([W, b])
        return model

    def _state(self) -> dict:
        return {"C_": self.C_}

    def _save_model(self, folder: Path) -> Path:
        scaler, clf = self.model_[0], self.model_[-1]
        path = folder / "head.npz"
        np.savez(path, mean=scaler.mean_, var=scaler.var_, scale=scaler.scale_, coef=clf.coef_,
                 intercept=clf.intercept_, classes=clf.classes_, n_iter=np.asarray(clf.n_iter_))
        return path

    def _restore(self, folder: Path, state: dict) -> None:
        mean, var, scale, coef, intercept, classes, n_iter = _arrays(
            folder, "mean", "var", "scale", "coef", "intercept", "classes", "n_iter")
        self.C_ = float(state["C_"])
        self.model_ = self._pipe(self.C_)
        scaler, clf = self.model_[0], self.model_[-1]
        scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
        scaler.n_features_in_ = clf.n_features_in_ = coef.shape[1]
        scaler.n_samples_seen_ = 0
        clf.coef_, clf.intercept_, clf.classes_, clf.n_iter_ = coef, intercept, classes, n_iter


class PrototypeHead(_Head):
    """Nearest class mean on centred, L2-normalized codes (a prototype head, as SimpleShot):
    each class is the mean of its training codes, an image goes to the most similar one by
    cosine; probabilities are a softmax of ``scale`` times the similarities. Nothing to tune,
    nothing to overfit: for one or two images per class, where linear heads collapse."""

    name = "prototype"

    def __init__(self, center=True, scale=10.0):
        self.center, self.scale = center, scale

    def _check_params(self):
        _require(0 < self.scale < np.inf, "scale", "> 0", self.scale)

    def _normalize(self, X):
        X = X - self.mean_ if self.center else X
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)

    def _fit(self, X, y, X_val, y_val):
        self.mean_ = X.mean(0) if self.center else np.zeros(X.shape[1], np.float32)
        Z = self._normalize(X)
        protos = np.zeros((len(self.classes_), X.shape[1]), np.float32)
        present = np.unique(y)
        for c in present:
            protos[c] = Z[y == c].mean(0)
        norms = np.linalg.norm(protos, axis=1, keepdims=True)
        self.prototypes_ = np.where(norms > 0, protos / np.maximum(norms, 1e-12), 0).astype(np.float32)
        self.present_ = np.isin(np.arange(len(self.classes_)), present)

    def _fit_multi(self, X, Y, X_val, Y_val):
        """A prototype per label: the direction from the mean of the images without it to the
        mean of those with it (centred, unit-length codes); probability the sigmoid of ``scale``
        times an image's cosine with it."""
        self.mean_ = X.mean(0) if self.center else np.zeros(X.shape[1], np.float32)
        Z = self._normalize(X)
        protos = np.zeros((Y.shape[1], X.shape[1]), np.float32)
        for j in range(Y.shape[1]):
            pos, neg = Y[:, j] > 0, Y[:, j] == 0
            if pos.any():
                protos[j] = Z[pos].mean(0) - (Z[neg].mean(0) if neg.any() else 0)
        norms = np.linalg.norm(protos, axis=1, keepdims=True)
        self.prototypes_ = np.where(norms > 0, protos / np.maximum(norms, 1e-12), 0).astype(np.float32)
        self.present_ = Y.sum(0) > 0

    def _fit_stream(self, stream, val):
        self.mean_ = (streaming_standardization(stream.blocks())[0] if self.center
                      else np.zeros(stream.shape[1])).astype(np.float32)
        sums = np.zeros((len(self.classes_), stream.shape[1]), np.float64)
        at = 0
        for X in stream.blocks():
            y = np.searchsorted(self.classes_, stream.y[at:at + len(X)])
            at += len(X)
            np.add.at(sums, y, self._normalize(X))
        present = np.isin(np.arange(len(self.classes_)), np.searchsorted(self.classes_, np.unique(stream.y)))
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        self.prototypes_ = np.where(norms > 0, sums / np.maximum(norms, 1e-12), 0).astype(np.float32)
        self.present_ = present

    def _logits(self, X):
        logits = self.scale * self._normalize(X) @ self.prototypes_.T
        logits[:, ~self.present_] = -np.inf  # classes absent from training: probability 0
        return logits

    def _proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        if getattr(self, "multi_label_", False):
            return _sigmoid(logits)  # a label never seen: -inf, probability 0
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def to_keras(self):
        """Centre, UnitNormalization, Dense (scale x prototypes), softmax: built-in layers only."""
        import keras

        inputs = keras.Input((self.n_features_in_,), name="codes")
        centre = keras.layers.Dense(self.n_features_in_, name="centre")
        unit = keras.layers.UnitNormalization(name="unit")
        activation = "sigmoid" if getattr(self, "multi_label_", False) else "softmax"
        dense = keras.layers.Dense(len(self.classes_), activation=activation, name=activation)
        model = keras.Model(inputs, dense(unit(centre(inputs))), name="head")
        centre.set_weights([np.eye(self.n_features_in_, dtype=np.float32), -self.mean_.astype(np.float32)])
        bias = np.where(self.present_, 0.0, -1e4).astype(np.float32)
        dense.set_weights([(self.scale * self.prototypes_.T).astype(np.float32), bias])
        return model

    def _save_model(self, folder: Path) -> Path:
        path = folder / "head.npz"
        np.savez(path, mean=self.mean_, prototypes=self.prototypes_, present=self.present_)
        return path

    def _restore(self, folder: Path, state: dict) -> None:
        self.mean_, self.prototypes_, present = _arrays(folder, "mean", "prototypes", "present")
        self.present_ = present.astype(bool)


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
