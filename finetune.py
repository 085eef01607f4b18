#!/usr/bin/env python
"""Fine-tune the top of the conv base under a head already trained on cached codes (the warm-up)."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__ + " Without augmentation the activations at the cut point are cached once "
        "(stage 1 at that layer) and only the unfrozen top is trained on them: minutes on a CPU. Writes "
        "a run folder with model.keras (preprocessing + base + head, class names inside) and the report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("head_run", help="run folder of train_head.py (the warm-up head)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--unfreeze-blocks", type=int, default=2, help="train the last N blocks of the base (and what follows)")
    g.add_argument("--unfreeze-from", default=None, metavar="LAYER", help="train from this layer on instead")
    p.add_argument("--learning-rate", type=float, default=1e-5, help="low, so the pretrained filters are not wrecked")
    p.add_argument("--optimizer", default="adam", choices=["adam", "rmsprop"], help="optimizer for the unfrozen layers")
    p.add_argument("--epochs", type=int, default=30, help="most epochs; early stopping on validation loss")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience, epochs")
    p.add_argument("--batch-size", type=int, default=32, help="images per training step")
    p.add_argument("--augment", action="store_true",
                   help="random flip, rotation, zoom and shift of training images (runs the whole network each epoch)")
    p.add_argument("--strength", type=float, default=0.1, help="augmentation strength (zoom/shift fraction)")
    p.add_argument("--cache-dir", default="cache", help="where cut-point activations are cached")
    p.add_argument("--runs-dir", default="runs", help="where the run folder is written")
    p.add_argument("--seed", type=int, default=0, help="seed of shuffling, augmentation and initialization")
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="two classes: the class whose ROC AUC and precision-recall curve are reported "
                        "(default: the second class name in sorted order)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar / per-epoch lines")
    a = p.parse_args(argv)
    quiet_tensorflow()
    from pipeline.finetune import finetune

    finetune(a.head_run, unfreeze_blocks=a.unfreeze_blocks if a.unfreeze_from is None else None,
             unfreeze_from=a.unfreeze_from, learning_rate=a.learning_rate, optimizer=a.optimizer, epochs=a.epochs,
             patience=a.patience, batch_size=a.batch_size, augment=a.augment, strength=a.strength,
             cache_dir=a.cache_dir, runs_dir=a.runs_dir, seed=a.seed, positive_class=a.positive_class,
             progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
