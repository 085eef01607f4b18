"""Training loops of the Keras heads: compiled epochs on codes in memory, minibatches streamed from a
code set out of core; one early-stopping rule for both.

Keras ``fit`` costs about 40 ms of fixed overhead per epoch and traces anew for every model, which
dominates the small draws of a sweep (a hundred codes, a few dozen epochs). In memory, a head's dense
layers are therefore trained as plain tensors (weights and Adam moments) by one ``tf.function`` per
architecture, traced once per process and reused by every fit: an epoch (shuffled minibatches, Adam
steps, dropout, then the validation loss) is one call. The trained weights go back into the head's
Keras model, which is what is saved, exported and predicted with.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
from tqdm import tqdm

# Deferred on purpose: scikit-learn, TensorFlow are imported inside the functions that use them, so
# that commands and workers that never need them start without loading them.

ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}  # keras.optimizers.Adam's defaults


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """One weight per class position: 'balanced' for the classes in ``y``, 1 for the others."""
    from sklearn.utils.class_weight import compute_class_weight
    weights = np.ones(n_classes, np.float32)
    present = np.unique(y)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


class EarlyStopping:
    """Keras's rule: an epoch improves if its monitored loss is below the best by more than
    ``min_delta``; training stops after ``patience`` epochs without improvement; the best
    weights are the ones kept (the ``initial`` ones if no epoch ever improved, e.g. NaN losses)."""

    def __init__(self, patience: int, min_delta: float, initial):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.best_weights, self.wait, self.epoch = np.inf, initial, 0, -1

    def stop(self, loss: float, weights) -> bool:
        """Record one epoch (``weights``: a callable giving them, called only on improvement)."""
        self.epoch += 1
        self.wait += 1
        if loss < self.best - self.min_delta:
            self.best, self.best_weights, self.wait = loss, weights(), 0
            return False
        return self.wait >= self.patience and self.epoch > 0


def loss_and_hits(model, X, y) -> tuple[float, int]:
    """Summed cross-entropy and number right of ``model`` on codes ``X`` with class positions ``y``."""
    proba = np.asarray(model(X, training=False), dtype=np.float64)
    picked = proba[np.arange(len(y)), y]
    return float(-np.log(np.clip(picked, 1e-7, 1)).sum()), int((proba.argmax(1) == y).sum())


@functools.cache
def _epoch_function():
    """The compiled epoch (built once per process; traced once per number of layers and dropout rate)."""
    import tensorflow as tf

    def forward(weights, x, rate, seed):
        *hidden, (W, b) = weights
        for i, (Wh, bh) in enumerate(hidden):
            x = tf.nn.relu(x @ Wh + bh)
            x = dropout(x, rate, seed, i) if rate else x
        if not hidden and rate:
            x = dropout(x, rate, seed, 0)
        return x @ W + b

    def dropout(x, rate, seed, i):
        keep = tf.random.stateless_uniform(tf.shape(x), seed=tf.stack([seed, tf.cast(i, tf.int64)])) >= rate
        return tf.where(keep, x / (1.0 - rate), 0.0)

    @tf.function(reduce_retracing=True)
    def _epoch(weights, m, v, step, Z, y, w, perm, Zv, yv, lr, batch_size, rate, seed):  # flat: one trace
        n = tf.shape(perm)[0]
        loss_sum, hits = tf.constant(0.0), tf.constant(0)
        for start in tf.range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb, wb = tf.gather(Z, idx), tf.gather(y, idx), tf.gather(w, idx)
            step += 1
            flat = tf.nest.flatten(weights)
            with tf.GradientTape() as tape:
                tape.watch(flat)
                logits = forward(weights, xb, rate, seed * 1_000_003 + step)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits)
                loss = tf.reduce_sum(losses * wb) / tf.cast(tf.shape(idx)[0], tf.float32)
            grads = tape.gradient(loss, flat)
            t = tf.cast(step, tf.float32)
            alpha = lr * tf.sqrt(1 - ADAM["beta_2"] ** t) / (1 - ADAM["beta_1"] ** t)
            m_flat, v_flat, new = [], [], []
            for p, g, mi, vi in zip(flat, grads, tf.nest.flatten(m), tf.nest.flatten(v)):
                mi = ADAM["beta_1"] * mi + (1 - ADAM["beta_1"]) * g
                vi = ADAM["beta_2"] * vi + (1 - ADAM["beta_2"]) * g * g
                new.append(p - alpha * mi / (tf.sqrt(vi) + ADAM["epsilon"]))
                m_flat.append(mi)
                v_flat.append(vi)
            weights = tf.nest.pack_sequence_as(weights, new)
            m, v = tf.nest.pack_sequence_as(m, m_flat), tf.nest.pack_sequence_as(v, v_flat)
            loss_sum += loss * tf.cast(tf.shape(idx)[0], tf.float32)
            hits += tf.reduce_sum(tf.cast(tf.argmax(logits, 1, output_type=tf.int32) == yb, tf.int32))
        val_logits = forward(weights, Zv, 0.0, seed)
        val_loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yv, val_logits))
        val_hits = tf.reduce_sum(tf.cast(tf.argmax(val_logits, 1, output_type=tf.int32) == yv, tf.int32))
        return weights, m, v, step, loss_sum, hits, val_loss, val_hits

    return _epoch


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How the dense layers of a Keras head are trained (the head's own parameters)."""

    epochs: int
    learning_rate: float
    batch_size: int
    patience: int
    min_delta: float
    dropout: float = 0.0
    seed: int = 0
    verbose: int = 0


def train_in_memory(dense_layers, Z, y, Z_val, y_val, schedule: Schedule, sample_weight=None) -> dict:
    """Train the Keras ``dense_layers`` (hidden ones, then the softmax output) on standardized codes
    ``Z`` with class positions ``y``: shuffled minibatches, Adam, dropout after each hidden layer
    (on the input without one), early stopping on the validation loss (``Z_val``, else the training
    loss); the best weights are set into the layers. Returns the history, per epoch."""
    import tensorflow as tf

    epoch = _epoch_function()
    weights = [tuple(tf.constant(a, tf.float32) for a in layer.get_weights()) for layer in dense_layers]
    m = [tuple(tf.zeros_like(a) for a in layer) for layer in weights]
    v = [tuple(tf.zeros_like(a) for a in layer) for layer in weights]
    has_val = Z_val is not None and len(Z_val)
    Zt, yt = tf.constant(Z, tf.float32), tf.constant(y, tf.int32)
    Zv = tf.constant(Z_val if has_val else Z[:0], tf.float32)
    yv = tf.constant(y_val if has_val else y[:0], tf.int32)
    w = tf.constant(np.ones(len(y)) if sample_weight is None else sample_weight, tf.float32)
    # the dropout rate is part of the trace: none, no dropout op
    scalars = [tf.constant(schedule.learning_rate, tf.float32), tf.constant(int(schedule.batch_size), tf.int32),
               float(schedule.dropout), tf.constant(schedule.seed, tf.int64)]
    step = tf.constant(0, tf.int64)
    rng = np.random.default_rng(schedule.seed)
    history = {"loss": [], "accuracy": []} | ({"val_loss": [], "val_accuracy": []} if has_val else {})
    stopping = EarlyStopping(schedule.patience, schedule.min_delta, weights)
    for _ in tqdm(range(schedule.epochs), desc="epochs", unit="epoch", disable=not schedule.verbose):
        perm = tf.constant(rng.permutation(len(y)), tf.int32)
        weights, m, v, step, loss, hits, val_loss, val_hits = epoch(weights, m, v, step, Zt, yt, w, perm, Zv, yv,
                                                                    *scalars)
        history["loss"].append(float(loss) / len(y))
        history["accuracy"].append(int(hits) / len(y))
        if has_val:
            history["val_loss"].append(float(val_loss) / len(y_val))
            history["val_accuracy"].append(int(val_hits) / len(y_val))
        if stopping.stop(history["val_loss" if has_val else "loss"][-1], lambda: weights):
            break
    for layer, best in zip(dense_layers, stopping.best_weights):
        layer.set_weights([np.asarray(a) for a in best])
    return history


def train_streamed(model, stream, val, *, classes, epochs, batch_size, patience, min_delta, seed, class_weight=False,
                   verbose=0) -> dict:
    """Minibatch training of a compiled Keras model on a :class:`~pipeline.codes._codeset.CodeStream`
    (labels turned into positions in ``classes``; ``class_weight``: balanced weights), early
    stopping on the validation loss (``val``, a stream, or the training loss), the best weights
    restored. Returns the history."""

    weights = class_weights(np.searchsorted(classes, stream.y), len(classes)) if class_weight else None
    history = {"loss": [], "accuracy": []} | ({"val_loss": [], "val_accuracy": []} if val is not None else {})
    stopping = EarlyStopping(patience, min_delta, model.get_weights())
    for epoch in tqdm(range(epochs), desc="epochs (out of core)", unit="epoch", disable=not verbose):
        losses, hits, seen = 0.0, 0, 0
        for X, y in stream.minibatches(batch_size, seed + epoch):
            y = np.searchsorted(classes, y)
            out = model.train_on_batch(X, y, sample_weight=None if weights is None else weights[y],
                                       return_dict=True)
            losses += out["loss"] * len(y)
            hits += out["accuracy"] * len(y)
            seen += len(y)
        history["loss"].append(losses / seen)
        history["accuracy"].append(hits / seen)
        if val is not None:
            v_loss, v_hits, at = 0.0, 0, 0
            for Xv in val.blocks():
                loss, hits = loss_and_hits(model, Xv, np.searchsorted(classes, val.y[at:at + len(Xv)]))
                at += len(Xv)
                v_loss, v_hits = v_loss + loss, v_hits + hits
            history["val_loss"].append(v_loss / len(val))
            history["val_accuracy"].append(v_hits / len(val))
        if stopping.stop(history["val_loss" if val is not None else "loss"][-1], model.get_weights):
            break
    model.set_weights(stopping.best_weights)
    return {k: [float(v) for v in vals] for k, vals in history.items()}
