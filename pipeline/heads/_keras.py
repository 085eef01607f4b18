"""The Keras heads: softmax regression and the MLP, trained in memory or streamed."""

from pathlib import Path

import numpy as np

from pipeline.errors import UserError, one_line
from pipeline.heads._base import _Head, _is_seed, _keras_seed, _require, holdout
from pipeline.heads._scaling import (
    standardization,
    streaming_standardization,
)
from pipeline.heads._trainloop import Schedule, class_weights, train_in_memory, train_streamed

# Deferred on purpose: scikit-learn, Keras are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.



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
