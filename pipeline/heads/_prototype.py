"""The prototype head: one mean code per class (or label), cosine to it as the logit."""

from pathlib import Path

import numpy as np

from pipeline.heads._base import _arrays, _Head, _require, _sigmoid
from pipeline.heads._scaling import (
    streaming_standardization,
)

# Deferred on purpose: scikit-learn, Keras are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.



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
