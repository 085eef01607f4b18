"""Stage 2: classifier heads trained on cached codes, scikit-learn style (fit / predict_proba).

All heads take codes ``X`` of shape (n_images, n_values) float32 and integer labels ``y`` in
0..n_classes-1. Validation data, when given, drives early stopping (Keras heads) or the choice
of the regularization strength (logistic regression).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import UserError


def _class_weights(y: np.ndarray, n_classes: int) -> dict:
    from sklearn.utils.class_weight import compute_class_weight
    present = np.unique(y)
    w = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(v) for c, v in zip(present, w)} | {c: 1.0 for c in range(n_classes) if c not in present}


class KerasHead:
    """Shared machinery of the Keras heads: a standardization layer adapted on the training
    codes, optional hidden layers, a softmax output; Adam; early stopping on validation loss
    (on training loss when there is no validation set), best weights restored."""

    kind = "keras"

    def __init__(self, hidden=(), dropout=0.0, epochs=200, learning_rate=1e-3, batch_size=64,
                 patience=10, class_weight=False, seed=0, verbose=0):
        if epochs < 1 or batch_size < 1 or learning_rate <= 0 or not 0 <= dropout < 1:
            raise UserError("head options: epochs and batch size must be >= 1, learning rate > 0, 0 <= dropout < 1")
        self.hidden, self.dropout, self.epochs = tuple(hidden), dropout, epochs
        self.learning_rate, self.batch_size, self.patience = learning_rate, batch_size, patience
        self.class_weight, self.seed, self.verbose = class_weight, seed, verbose
        self.model_ = None
        self.history_: dict = {}

    def _build(self, X, n_classes):
        import keras
        norm = keras.layers.Normalization(name="standardize")
        norm.adapt(X)
        inputs = keras.Input((X.shape[1],), name="codes")
        x = norm(inputs)
        for i, units in enumerate(self.hidden):
            x = keras.layers.Dense(units, activation="relu", name=f"hidden{i + 1}")(x)
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, name=f"dropout{i + 1}")(x)
        if not self.hidden and self.dropout:
            x = keras.layers.Dropout(self.dropout, name="dropout")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax")(x)
        model = keras.Model(inputs, outputs, name="head")
        model.compile(keras.optimizers.Adam(self.learning_rate), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None):
        import keras
        keras.utils.set_random_seed(self.seed)
        n_classes = n_classes or int(y.max()) + 1
        self.model_ = self._build(X, n_classes)
        has_val = X_val is not None and len(X_val)
        stop = keras.callbacks.EarlyStopping("val_loss" if has_val else "loss", patience=self.patience,
                                             restore_best_weights=True)
        hist = self.model_.fit(
            X, y, batch_size=self.batch_size, epochs=self.epochs, verbose=self.verbose, callbacks=[stop],
            validation_data=(X_val, y_val) if has_val else None, shuffle=True,
            class_weight=_class_weights(y, n_classes) if self.class_weight else None)
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_images, n_classes) class probabilities."""
        return np.asarray(self.model_.predict(X, batch_size=1024, verbose=0))

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "head.keras"
        self.model_.save(path)
        return path


class SoftmaxHead(KerasHead):
    """One Dense softmax layer on standardized codes (the classic recipe on CNN codes)."""

    name = "softmax"

    def __init__(self, **kw):
        kw.setdefault("hidden", ())
        super().__init__(**kw)


class MLPHead(KerasHead):
    """Dense 256 + ReLU + Dropout 0.5 + softmax by default; ``hidden`` sets the layer sizes."""

    name = "mlp"

    def __init__(self, hidden=(256,), dropout=0.5, **kw):
        super().__init__(hidden=hidden, dropout=dropout, **kw)


class LogRegHead:
    """scikit-learn multinomial logistic regression (L-BFGS) on standardized codes.

    The inverse regularization strength C is chosen from ``Cs`` by accuracy on the validation
    set, then the model is refit on the training set; without a validation set, by 3-fold
    stratified cross-validation on the training set (where every class has 3 or more images),
    else C=1.
    """

    name = "logreg"
    kind = "sklearn"

    def __init__(self, Cs=(0.001, 0.01, 0.1, 1.0), max_iter=300, class_weight=False, seed=0, n_jobs=None,
                 verbose=0):
        self.Cs, self.max_iter, self.class_weight, self.seed = tuple(Cs), max_iter, class_weight, seed
        self.n_jobs = n_jobs
        self.model_ = None
        self.history_ = {}

    def _pipe(self, C):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=C, max_iter=self.max_iter, class_weight="balanced" if self.class_weight else None,
            random_state=self.seed))

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None):
        import warnings
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV, StratifiedKFold

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if X_val is not None and len(X_val):
                scores = {}
                for C in self.Cs:
                    scores[C] = float((self._pipe(C).fit(X, y).predict(X_val) == y_val).mean())
                best = max(self.Cs, key=lambda c: (scores[c], -c))  # ties: stronger regularization
                self.history_ = {"val_accuracy_by_C": {str(c): s for c, s in scores.items()}}
            elif np.bincount(y).min(initial=0) >= 3 and len(self.Cs) > 1:
                cv = StratifiedKFold(3, shuffle=True, random_state=self.seed)
                search = GridSearchCV(self._pipe(1.0), {"logisticregression__C": list(self.Cs)}, cv=cv,
                                      n_jobs=self.n_jobs).fit(X, y)
                best = search.best_params_["logisticregression__C"]
                self.history_ = {"cv_accuracy_by_C": dict(zip(map(str, self.Cs),
                                                              map(float, search.cv_results_["mean_test_score"])))}
            else:
                best = 1.0
            self.C_ = best
            self.model_ = self._pipe(best).fit(X, y)
        self.n_classes_ = n_classes or int(y.max()) + 1
        return self

    def predict_proba(self, X) -> np.ndarray:
        p = self.model_.predict_proba(X)
        out = np.zeros((len(X), self.n_classes_), np.float32)
        out[:, self.model_.classes_] = p  # classes absent from training get probability 0
        return out

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def save(self, folder: Path) -> Path:
        import joblib
        path = Path(folder) / "head.joblib"
        joblib.dump(self, path)
        return path


HEADS = {"softmax": SoftmaxHead, "mlp": MLPHead, "logreg": LogRegHead}


def make_head(name: str, **params):
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[name](**params)


def load_head(folder):
    """Load a head saved by ``save`` from a run folder."""
    folder = Path(folder)
    if (folder / "head.keras").exists():
        import keras
        head = SoftmaxHead()
        head.model_ = keras.saving.load_model(folder / "head.keras")
        return head
    if (folder / "head.joblib").exists():
        import joblib
        return joblib.load(folder / "head.joblib")
    raise UserError(f"{folder} holds no saved head (head.keras or head.joblib)")
