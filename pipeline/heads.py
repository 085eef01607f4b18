"""Stage 2: classifier heads trained on cached codes, scikit-learn style (fit / predict_proba).

All heads take codes ``X`` of shape (n_images, n_values) float32 and integer labels ``y`` in
0..n_classes-1. Validation data, when given, drives early stopping (Keras heads) or the choice
of the regularization strength (logistic regression).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import UserError, one_line


def _class_weights(y: np.ndarray, n_classes: int) -> dict:
    from sklearn.utils.class_weight import compute_class_weight
    present = np.unique(y)
    w = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(v) for c, v in zip(present, w)} | {c: 1.0 for c in range(n_classes) if c not in present}


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


def _validation_loss_callback():
    import keras

    class ValidationLoss(keras.callbacks.Callback):
        """val_loss / val_accuracy from one direct forward pass per epoch: Keras's own
        validation loop costs ~50 ms an epoch, more than training on a few hundred codes."""

        def __init__(self, X_val, y_val):
            super().__init__()
            self.X_val, self.y_val = X_val, y_val

        def on_epoch_end(self, epoch, logs=None):
            proba = np.asarray(self.model(self.X_val, training=False), dtype=np.float64)
            picked = proba[np.arange(len(self.y_val)), self.y_val]
            logs["val_loss"] = float(-np.log(np.clip(picked, 1e-7, 1)).mean())
            logs["val_accuracy"] = float((proba.argmax(1) == self.y_val).mean())

    return ValidationLoss


def _ValidationLoss(X_val, y_val):
    return _validation_loss_callback()(X_val, y_val)


class KerasHead:
    """Shared machinery of the Keras heads: a standardization layer set from the training
    codes, optional hidden layers, a softmax output; Adam; early stopping on validation loss,
    best weights restored. Without a validation set, 10% of the training codes are held out for
    it (stratified; on training loss where a class has a single image). An epoch counts
    as better only if the loss drops by ``min_delta``: without it, small training sets creep on
    for a hundred epochs for a few hundredths of a point."""

    kind = "keras"

    def __init__(self, hidden=(), dropout=0.0, epochs=200, learning_rate=3e-3, batch_size=256,
                 patience=5, min_delta=0.002, class_weight=False, seed=0, verbose=0):
        if (epochs < 1 or batch_size < 1 or learning_rate <= 0 or not 0 <= dropout < 1 or patience < 0
                or min_delta < 0 or min(hidden, default=1) < 1):
            raise UserError("head options: epochs, batch size and hidden sizes must be >= 1, learning rate > 0, "
                            "0 <= dropout < 1, patience and min-delta >= 0")
        self.hidden, self.dropout, self.epochs = tuple(hidden), dropout, epochs
        self.learning_rate, self.batch_size, self.patience = learning_rate, batch_size, patience
        self.min_delta = min_delta
        self.class_weight, self.seed, self.verbose = class_weight, seed, verbose
        self.model_ = None
        self.history_: dict = {}

    def _build(self, X, n_classes):
        import keras

        from .scaling import standardization
        norm = keras.layers.Normalization(name="standardize")
        norm.build((None, X.shape[1]))
        norm.set_weights([*standardization(X), np.asarray(len(X))])
        norm.finalize_state()
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
        X, y, X_val, y_val = holdout(X, y, X_val, y_val, seed=self.seed)
        self.model_ = self._build(X, n_classes)
        has_val = X_val is not None and len(X_val)
        callbacks = [_ValidationLoss(X_val, y_val)] if has_val else []
        callbacks.append(keras.callbacks.EarlyStopping(
            "val_loss" if has_val else "loss", patience=self.patience, min_delta=self.min_delta,
            restore_best_weights=True))
        hist = self.model_.fit(
            X, y, batch_size=self.batch_size, epochs=self.epochs, verbose=self.verbose, callbacks=callbacks,
            shuffle=True, class_weight=_class_weights(y, n_classes) if self.class_weight else None)
        self.history_ = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n_images, n_classes) class probabilities."""
        return np.concatenate([np.asarray(self.model_(X[s:s + 4096], training=False))
                               for s in range(0, len(X), 4096)]) if len(X) else np.zeros((0, self.model_.output_shape[-1]), np.float32)

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def params(self) -> dict:
        return dict(hidden=list(self.hidden), dropout=self.dropout, epochs=self.epochs,
                    learning_rate=self.learning_rate, batch_size=self.batch_size, patience=self.patience,
                    min_delta=self.min_delta, class_weight=self.class_weight, seed=self.seed, verbose=self.verbose)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "head.keras"
        self.model_.save(path)
        _save_description(folder, self)
        return path

    def _restore(self, folder: Path) -> None:
        import keras
        try:  # safe mode: a Lambda layer (Python bytecode) in a shared file is refused, not run
            self.model_ = keras.saving.load_model(Path(folder) / "head.keras", compile=False, safe_mode=True)
        except Exception as exc:
            raise UserError(f"{folder}/head.keras was not loaded: {one_line(exc)}") from None


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
    set (fits along increasing C warm-start from the previous one). Without a validation set,
    10% of the training codes are held out to choose C, then the model is refit on all of them;
    where a class has a single image, or only one C is given, the largest C is used.
    """

    name = "logreg"
    kind = "sklearn"

    def __init__(self, Cs=(0.001, 0.01, 0.1, 1.0), max_iter=300, class_weight=False, seed=0, verbose=0):
        if not Cs or min(Cs) <= 0 or max_iter < 1:
            raise UserError("logreg options: --Cs must be one or more positive numbers, max_iter >= 1")
        self.Cs, self.max_iter, self.class_weight, self.seed = tuple(Cs), max_iter, class_weight, seed
        self.verbose = verbose
        self.model_ = None
        self.history_ = {}

    def _pipe(self, C):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        from .scaling import ShrunkScaler
        return make_pipeline(ShrunkScaler(), LogisticRegression(
            C=C, max_iter=self.max_iter, class_weight="balanced" if self.class_weight else None,
            random_state=self.seed))

    def fit(self, X, y, X_val=None, y_val=None, n_classes=None):
        import copy
        import warnings

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
        self.n_classes_ = n_classes or int(y.max()) + 1
        return self

    def predict_proba(self, X) -> np.ndarray:
        p = self.model_.predict_proba(X)
        out = np.zeros((len(X), self.n_classes_), np.float32)
        out[:, self.model_.classes_] = p  # classes absent from training get probability 0
        return out

    def predict(self, X) -> np.ndarray:
        return self.predict_proba(X).argmax(1)

    def params(self) -> dict:
        return dict(Cs=list(self.Cs), max_iter=self.max_iter, class_weight=self.class_weight, seed=self.seed,
                    verbose=self.verbose)

    def save(self, folder: Path) -> Path:
        """``head.npz`` (the fitted arrays) and ``head.json``: no pickle, so that loading a run
        folder someone shares cannot run code."""
        scaler, clf = self.model_[0], self.model_[-1]
        path = Path(folder) / "head.npz"
        np.savez(path, mean=scaler.mean_, var=scaler.var_, scale=scaler.scale_, coef=clf.coef_,
                 intercept=clf.intercept_, classes=clf.classes_, n_iter=np.asarray(clf.n_iter_))
        _save_description(folder, self, C_=self.C_, n_classes_=self.n_classes_)
        return path

    def _restore(self, folder: Path) -> None:
        state = _read_description(folder)["state"]
        try:
            with np.load(Path(folder) / "head.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{folder}/head.npz is not a saved head ({one_line(exc)})") from None
        self.C_, self.n_classes_ = float(state["C_"]), int(state["n_classes_"])
        self.model_ = self._pipe(self.C_)
        scaler, clf = self.model_[0], self.model_[-1]
        scaler.mean_, scaler.var_, scaler.scale_ = arrays["mean"], arrays["var"], arrays["scale"]
        scaler.n_features_in_ = clf.n_features_in_ = arrays["coef"].shape[1]
        scaler.n_samples_seen_ = 0
        clf.coef_, clf.intercept_, clf.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
        clf.n_iter_ = arrays["n_iter"]


def _save_description(folder, head, **state) -> None:
    (Path(folder) / "head.json").write_text(json.dumps(
        {"head": head.name, "params": head.params(), "state": state, "history": head.history_}, indent=2))


def _read_description(folder) -> dict:
    try:
        return json.loads((Path(folder) / "head.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}/head.json is not a head description ({one_line(exc)})") from None


HEADS = {"softmax": SoftmaxHead, "mlp": MLPHead, "logreg": LogRegHead}


def make_head(name: str, **params):
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)}")
    return HEADS[name](**params)


def load_head(folder):
    """Load a head saved by ``save`` from a run folder: the same class with the same parameters.

    Nothing in the folder is executed: arrays and JSON only, Keras files in safe mode. A
    ``head.joblib`` (a pickle, written by version 0.1.0 before this) is refused, not loaded.
    """
    folder = Path(folder)
    if (folder / "head.json").exists():
        desc = _read_description(folder)
        if desc.get("head") not in HEADS:
            raise UserError(f"{folder}/head.json names an unknown head {desc.get('head')!r}")
        try:
            head = HEADS[desc["head"]](**desc.get("params", {}))
        except (TypeError, UserError) as exc:
            raise UserError(f"{folder}/head.json: parameters do not fit the {desc['head']} head ({exc})") from None
        head.history_ = desc.get("history", {})
    elif (folder / "head.keras").exists():  # written before head.json: a Keras head, parameters unknown
        head = SoftmaxHead()
    elif (folder / "head.joblib").exists():
        raise UserError(f"{folder}/head.joblib is a pickle written by an older version; loading it could run any "
                        f"code it holds, so it is not loaded: train the head again (make train)")
    else:
        raise UserError(f"{folder} holds no saved head (head.json with head.keras or head.npz)")
    head._restore(folder)
    return head
