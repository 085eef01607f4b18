"""Fine-tuning after warm-up, and the from-scratch baseline, on the split stored with the codes.

Warm-up comes for free: the head already trained on cached codes (a stage-2 run) is loaded on
top of the frozen base. Then the top of the base is unfrozen (BatchNorm layers stay frozen and
in inference mode) and trained on with a low learning rate and early stopping on validation.

Fast path (no augmentation): the activations at the cut point are cached once with stage 1
(``flatten`` codes of the cut layer, resumable like any code set) and only the unfrozen top is
trained on them. With augmentation, images go through the whole network every epoch.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from pipeline._files import writable_folder
from pipeline._records import load_record
from pipeline.backbones import MAX_IMAGE_SIZE, check_batch_memory, code_layer_name, get_backbone
from pipeline.codes import CodeSet, generate_codes, open_code_sets, setting
from pipeline.data import TEST, TRAIN, VAL, augmentation, image_dataset
from pipeline.deploy import classifier_from_head_run, model_info, save_model
from pipeline.errors import ParameterError, UserError
from pipeline.heads import holdout
from pipeline.reports import positive_index, read_trained_on
from pipeline.runs._folders import Tested, finish_run

logger = logging.getLogger(__name__)

# Deferred on purpose: Keras is imported inside the functions that use it, so that commands and
# workers that never need it start without loading it.


def valid_cuts(trunk) -> list[str]:
    """Layers whose output is the only tensor that the rest of the network needs, in order."""
    layers = trunk.layers
    index = {l.name: i for i, l in enumerate(layers)}
    last_use = [i for i in range(len(layers))]
    for i, layer in enumerate(layers):
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                j = index.get(t._keras_history[0].name)
                if j is not None:
                    last_use[j] = max(last_use[j], i)
    cuts, reach = [], -1  # reach: the latest layer that uses a tensor made before layer i
    for i in range(len(layers) - 1):
        if reach <= i:
            cuts.append(layers[i].name)
        reach = max(reach, last_use[i])
    return cuts


def cut_layer(trunk, backbone: str, unfreeze_blocks: int | None, unfreeze_from: str | None) -> str:
    """Name of the layer whose output feeds the first unfrozen layer.

    ``unfreeze_from`` names the first layer to train (it must start a section that depends on
    one tensor only, e.g. a block's first layer); else the last ``unfreeze_blocks`` blocks (as
    the backbone's registry entry groups its layers) and all layers after them are trained.
    """
    block_of = get_backbone(backbone).block_of
    names = [l.name for l in trunk.layers]
    cuts = valid_cuts(trunk)
    if unfreeze_from:
        if unfreeze_from not in names:
            raise ParameterError("unfreeze_from", f"{unfreeze_from}: no layer of that name in {backbone}")
        before = names[names.index(unfreeze_from) - 1]
        if before not in cuts:
            starts = [names[names.index(c) + 1] for c in cuts[-6:]]
            raise ParameterError("unfreeze_from", f"{unfreeze_from}: the layers after it also need earlier tensors; "
                            f"choose the start of a block, e.g. {', '.join(starts)}")
        return before
    if unfreeze_blocks is None or unfreeze_blocks < 1:
        raise ParameterError("unfreeze_blocks", "must be at least 1 (or name a layer with --unfreeze-from)")
    for cut in reversed(cuts):
        after = {block_of(n) for n in names[names.index(cut) + 1:]} - {None}
        if len(after) >= unfreeze_blocks and block_of(cut) not in after:
            return cut
    raise ParameterError("unfreeze_blocks", f"{unfreeze_blocks}: {backbone} has fewer blocks than that before this layer")


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """How a network is trained on images: fine-tuning and the from-scratch baseline (their
    defaults differ: :data:`FINETUNING`, :data:`SCRATCH`)."""

    epochs: int = 30                  # most epochs; early stopping on the validation loss ends sooner
    patience: int = 3                 # epochs without improvement before stopping
    batch_size: int = 32
    learning_rate: float = 1e-5
    augment: bool = False             # random flip, rotation, zoom and shift of the training images
    strength: float = 0.1             # augmentation strength (zoom / shift fraction)
    seed: int = 0                     # of shuffling, augmentation and initialization
    positive_class: str | None = None  # two classes: the class of the ROC and precision-recall curves
    progress: bool = True             # per-epoch lines and progress bars

    def check(self) -> None:
        for name, ok, want in (("epochs", self.epochs >= 1, "at least 1"), ("patience", self.patience >= 0, "0 or more"),
                               ("batch_size", self.batch_size >= 1, "at least 1"),
                               ("learning_rate", 0 < self.learning_rate < float("inf"), "a number above 0"),
                               ("strength", 0 <= self.strength < 1, "from 0 up to (not including) 1"),
                               ("seed", self.seed >= 0, "0 or more")):
            if not ok:
                raise ParameterError(name, f"must be {want} (not {getattr(self, name)})")

    @classmethod
    def merged(cls, defaults: "TrainingOptions", options: dict) -> "TrainingOptions":
        """``defaults``, or the record passed as ``training=``, with the keyword ``options`` on top."""
        base = options.pop("training", None) or defaults
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ParameterError(sorted(unknown)[0], "is not a training option")
        merged = dataclasses.replace(base, **options)
        merged.check()
        return merged


FINETUNING = TrainingOptions()
SCRATCH = TrainingOptions(epochs=60, patience=6, learning_rate=1e-3)


@dataclasses.dataclass
class _Fitted:
    history: dict
    seconds: float
    proba: np.ndarray


def _split_indices(cs: CodeSet):
    """Indices of the training, validation and test images of the stored split."""
    return tuple(np.flatnonzero(cs.split == s) for s in (TRAIN, VAL, TEST))


def _fit_and_predict(model, train, validation, test, options: TrainingOptions) -> _Fitted:
    """The part every image-trained run shares: fit with early stopping on the validation loss
    (the best weights kept), then the class probabilities of the test images. ``train`` is a
    dataset, or (inputs, labels) arrays to be shuffled in batches."""
    import keras

    stop = keras.callbacks.EarlyStopping("val_loss", patience=options.patience, restore_best_weights=True)
    fit = dict(batch_size=options.batch_size, shuffle=True) if isinstance(train, tuple) else dict(shuffle=False)
    t0 = time.perf_counter()
    hist = model.fit(*(train if isinstance(train, tuple) else (train,)), validation_data=validation,
                     epochs=options.epochs, callbacks=[stop], verbose=2 if options.progress else 0, **fit)
    seconds = time.perf_counter() - t0
    proba = np.asarray(model.predict(test, batch_size=256 if isinstance(test, np.ndarray) else None, verbose=0))
    return _Fitted({k: [float(v) for v in vals] for k, vals in hist.history.items()}, seconds, proba)


def _finish(runs_dir, name: str, cs: CodeSet, test, fitted: _Fitted, options: TrainingOptions, *, record: dict,
            save, detail: str):
    """Evaluate on the test images and write the run folder (see :func:`finish_run`); the images
    it trained on are the training and validation parts, and those its warm-up head trained on."""
    record = dict(record)
    warmup_seen = record.pop("warmup_seen", set())
    return finish_run(runs_dir, name, record=dict(record, train_seconds=round(fitted.seconds, 2)), save=save,
                      tested=Tested(cs.y[test], fitted.proba, cs.class_names, [cs.paths[i] for i in test],
                                    cs.data_root, options.positive_class),
                      history=fitted.history,
                      train_paths=[cs.paths[i] for i in np.flatnonzero((cs.split == TRAIN) | (cs.split == VAL))]
                      + sorted(warmup_seen),
                      detail=detail + f"trained in {fitted.seconds:.0f} s")


def _never_seen(test: np.ndarray, cs: CodeSet, head_run) -> tuple[np.ndarray, set]:
    """The test images a warm-up head never trained on, and the images it trained on. A code set
    split anew (--resplit) after its head was trained may test on the head's training images:
    only the others are counted, and one line says so."""
    seen = read_trained_on(head_run)
    if not seen:
        return test, set()
    fresh = np.array([cs.paths[i] not in seen for i in test], bool)
    if not fresh.all():
        if not fresh.any():
            raise UserError(f"every test image of {cs.path} is a training image of the warm-up head {head_run} (the "
                            f"split changed since it was trained): train a new head on this split first")
        logger.info(f"note: {int((~fresh).sum())} of the {len(test)} test images of {cs.path} were training images of "
                    f"the warm-up head (the split changed since it was trained): counted only the {int(fresh.sum())} "
                    f"it never saw")
    return test[fresh], seen


def _set_trainable(trunk, tail_layers, head_model):
    import keras
    trunk.trainable = True
    tail = {id(l) for l in tail_layers}
    for layer in trunk.layers:
        layer.trainable = id(layer) in tail and not isinstance(layer, keras.layers.BatchNormalization)
    head_model.trainable = True


def finetune(head_run, unfreeze_blocks: int | None = 2, unfreeze_from: str | None = None, optimizer="adam",
             cache_dir="cache", runs_dir="runs", **options):
    """Fine-tune the top of the base under a head trained on codes; returns its :class:`Run`.
    ``options``: :class:`TrainingOptions` (defaults :data:`FINETUNING`), or ``training=`` the
    record; ``positive_class`` (two classes) defaults to that of the warm-up head's report."""
    import keras

    options = TrainingOptions.merged(FINETUNING, options)
    if optimizer not in ("adam", "rmsprop"):
        raise ParameterError("optimizer", f"{optimizer}: choose adam or rmsprop")
    writable_folder(runs_dir, "--runs-dir")
    writable_folder(cache_dir, "--cache-dir")
    record = load_record(head_run, kind="head-on-codes")
    if "members" in record.get("code_attrs", {}):
        raise UserError(f"{head_run} is a head on joined code sets; fine-tuning takes a head on one code set")
    if record.get("task") == "multi-label":
        raise UserError(f"{head_run} is a multi-label head: fine-tuning takes single-label heads for now "
                        f"(export and predict work on it)")
    model, trunk, head_model, record = classifier_from_head_run(head_run)
    attrs = record["code_attrs"]
    missing = [k for k in ("data_root", "split_fractions", "split_seed") if not attrs.get(k)]
    if missing:
        raise UserError(f"{head_run}/record.json: its codes do not state their {missing[0]} (made by other means "
                        f"than stage 1?): fine-tuning reads the images again and needs it")
    cs = CodeSet.load(record["codes"])
    options = dataclasses.replace(options, positive_class=options.positive_class
                                  or record.get("metrics", {}).get("positive_class"))
    positive_index(cs.class_names, options.positive_class)
    size, resize = int(attrs["image_size"]), setting(attrs, "resize")
    check_batch_memory(options.batch_size, size, training=True)
    cut = cut_layer(trunk, attrs["backbone"], unfreeze_blocks, unfreeze_from)
    tail = keras.Model(trunk.get_layer(cut).output, trunk.output, name="tail")
    _set_trainable(trunk, tail.layers, head_model)
    n_trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    logger.info(f"fine-tuning {attrs['backbone']} after {cut} ({len([l for l in tail.layers if l.trainable])} layers, "
                f"{n_trainable:,} weights trainable) with {optimizer} lr {options.learning_rate:g}"
                + (f", augmentation strength {options.strength}" if options.augment
                   else ", fast path on cached activations"))
    opt = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop}[optimizer](options.learning_rate)
    tr, va, te = _split_indices(cs)
    te, seen = _never_seen(te, cs, head_run)
    keras.utils.set_random_seed(options.seed)
    if not options.augment:
        X, keep = _cut_activations(cs, attrs, cut, cache_dir, options.progress)
        pos = {p: i for i, p in enumerate(keep)}
        rows = lambda idx: np.array([pos[cs.paths[i]] for i in idx])
        X_tr, y_tr, X_va, y_va = holdout(X[rows(tr)], cs.y[tr], X[rows(va)] if len(va) else None,
                                         cs.y[va] if len(va) else None, seed=options.seed)
        inp = keras.Input(X.shape[1:], name="activations")
        pool = model.get_layer(code_layer_name(attrs["layer"], attrs["pooling"]))
        top = keras.Model(inp, head_model(pool(tail(inp, training=False))), name="top")
        top.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        fitted = _fit_and_predict(top, (X_tr, y_tr), (X_va, y_va), X[rows(te)], options)
    else:
        if len(va) == 0:
            raise UserError("augmented fine-tuning needs a validation split (make codes with --split 70/15/15)")
        ds = lambda idx, **kw: image_dataset(Path(attrs["data_root"]), [cs.paths[i] for i in idx], cs.y[idx], size,
                                             options.batch_size, resize=resize, **kw)
        model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"])
        fitted = _fit_and_predict(model, ds(tr, shuffle=True, augment=augmentation(options.strength, options.seed),
                                            seed=options.seed), ds(va), ds(te), options)
    warmup = record.get("metrics", {})
    rec = {"title": f"fine-tuned {attrs['backbone']} from {cut} (head {record['head']})", "kind": "finetune",
           "head": record["head"], "warmup_run": str(head_run), "codes": record["codes"], "code_attrs": attrs,
           "split_digest": cs.split_digest(),
           "cut_layer": cut, "trainable_weights": n_trainable, "optimizer": optimizer,
           "learning_rate": options.learning_rate, "augment": options.augment,
           "strength": options.strength if options.augment else None,
           "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)), "warmup_metrics": warmup,
           "warmup_seen": seen - {cs.paths[i] for i in np.r_[tr, va]}}
    save = lambda run_dir: save_model(model, run_dir / "model.keras", cs.class_names,
                                      model_info(attrs, "finetune", str(head_run)))
    return _finish(runs_dir, f"{attrs['backbone']}-finetune", cs, te, fitted, options, record=rec, save=save,
                   detail=f"warm-up head: test accuracy {warmup.get('accuracy', float('nan')):.4f}; ")


def _cut_activations(cs: CodeSet, attrs, cut, cache_dir, progress):
    """Activations at the cut layer for every image of the code set, via the stage-1 cache."""
    root = Path(attrs["data_root"])
    present = {p.name for p in root.iterdir() if p.is_dir()}
    exclude = sorted(present - set(cs.class_names))
    split = tuple(json.loads(attrs["split_fractions"]))
    path = generate_codes(root, attrs["backbone"], [cut], ["flatten"], attrs["weights"], int(attrs["image_size"]),
                          cache_dir, exclude=exclude, split=split, seed=int(attrs["split_seed"]),
                          resize=setting(attrs, "resize"), progress=progress)[0]
    act = CodeSet.load(path)
    missing = set(cs.paths) - set(act.paths)
    if missing:
        raise UserError(f"{len(missing)} images of the code set have no activations at {cut} "
                        f"(changed or unreadable since the codes were made), e.g. {sorted(missing)[0]}")
    shape = json.loads(act.attrs["code_shape"])
    return act.X.reshape((-1, *shape)), act.paths


def scratch_cnn(n_classes: int, size: int, filters: int = 32):
    """The small from-scratch baseline: 4 x (conv 3x3 + ReLU + max-pool), dropout 0.25 after every
    second, Dense 256 + ReLU + dropout 0.5, softmax. Input raw RGB 0..255."""
    import keras
    from keras import layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for i in range(4):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        if i % 2 == 1:
            x = layers.Dropout(0.25, name=f"dropout{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(256, activation="relu", name="dense")(x)
    x = layers.Dropout(0.5, name="dropout_top")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="softmax")(x)
    return keras.Model(inputs, outputs, name="scratch_cnn")


def scratch(codes, image_size=128, runs_dir="runs", **options):
    """Train :func:`scratch_cnn` on the images of a code set's stored split; returns its :class:`Run`.
    ``options``: :class:`TrainingOptions` (defaults :data:`SCRATCH`), or ``training=`` the record."""
    import keras

    options = TrainingOptions.merged(SCRATCH, options)
    if image_size < 16:  # four 2x2 poolings
        raise ParameterError("image_size", f"{image_size}: the from-scratch CNN needs at least 16 pixels")
    if image_size > MAX_IMAGE_SIZE:
        raise ParameterError("image_size", f"{image_size} is larger than images this tool takes (at most {MAX_IMAGE_SIZE})")
    check_batch_memory(options.batch_size, image_size, training=True)
    writable_folder(runs_dir, "--runs-dir")
    cs = open_code_sets(codes)
    if cs.multi_label:
        raise UserError(f"{cs.path} is a multi-label code set: the from-scratch baseline is single-label for now")
    positive_index(cs.class_names, options.positive_class)
    tr, va, te = _split_indices(cs)
    if len(va) == 0:
        raise UserError("the from-scratch baseline needs a validation split (make codes with --split 70/15/15)")
    keras.utils.set_random_seed(options.seed)
    model = scratch_cnn(len(cs.class_names), image_size)
    model.compile(keras.optimizers.Adam(options.learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    ds = lambda idx, **kw: image_dataset(Path(cs.attrs["data_root"]), [cs.paths[i] for i in idx], cs.y[idx], image_size,
                                         options.batch_size, **kw)
    augment = augmentation(options.strength, options.seed) if options.augment else None
    fitted = _fit_and_predict(model, ds(tr, shuffle=True, seed=options.seed, augment=augment), ds(va), ds(te), options)
    rec = {"title": f"from-scratch CNN at {image_size} px", "kind": "scratch", "codes": str(cs.path),
           "split_digest": cs.split_digest(),
           "image_size": image_size, "augment": options.augment, "n_train": int(len(tr)), "n_val": int(len(va)),
           "n_test": int(len(te))}
    save = lambda run_dir: save_model(model, run_dir / "model.keras", cs.class_names,
                                      {"kind": "scratch", "source": str(cs.path), "image_size": image_size,
                                       "backbone": None})
    return _finish(runs_dir, "scratch", cs, te, fitted, options, record=rec, save=save, detail="")
