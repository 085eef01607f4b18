"""tf.data input pipelines over image files, for training through the whole network.

Decoding uses the same Pillow loader as stage 1, run in parallel by tf.data; augmentation is a
stack of Keras random layers applied to training batches only, inside the input pipeline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data._scan import RESIZES, ImageError, load_image

# Deferred on purpose: Keras, TensorFlow are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.


def augmentation(strength: float = 0.1, seed: int = 0):
    """Random horizontal flip, rotation (±strength·180°), zoom and shift (±strength) as one layer."""
    import keras
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(strength / 2, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(strength, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomTranslation(strength, strength, fill_mode="reflect", seed=seed + 3),
    ], name="augmentation")


def image_dataset(root, paths, labels, size: int, batch_size: int, shuffle: bool = False, augment=None,
                  seed: int = 0, resize: str = RESIZES[0]):
    """Batches of (images float32 (b, size, size, 3) 0..255, labels) from image files.

    ``augment`` (a Keras layer, e.g. :func:`augmentation`) is applied in training mode when
    given: pass it for the training set only. ``resize``: as the codes were made (see
    :func:`~pipeline.data._scan.load_image`). An image that fails to decode here (it decoded
    when its codes were cached) gives a black image rather than stopping a long training run.
    """
    import tensorflow as tf

    root = Path(root)
    paths = [str(root / p) for p in paths]

    def load(i):
        try:
            return load_image(paths[int(i)], size, resize=resize)
        except ImageError:
            return np.zeros((size, size, 3), np.uint8)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), np.asarray(labels, np.int64)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(i, y):
        img = tf.numpy_function(load, [i], tf.uint8)
        img.set_shape((size, size, 3))
        return tf.cast(img, tf.float32), y

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
