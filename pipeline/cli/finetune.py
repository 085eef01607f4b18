"""Fine-tune the top of the conv base under a head already trained on cached codes (the warm-up).
Without augmentation the activations at the cut point are cached once (stage 1 at that layer)
and only the unfrozen top is trained on them: minutes on a CPU. Writes a run folder with
model.keras (preprocessing + base + head, class names inside) and the report."""
from pipeline.cli import add_common_options, default, finite_float, training_options
from pipeline.cli.train import add_positive_class
from pipeline.runs import FINETUNING, finetune

HELP = "fine-tune the top of the conv base under a trained head"


def add_arguments(p):
    f = lambda name: default(finetune, name) if name in ("unfreeze_blocks", "optimizer", "cache_dir", "runs_dir") \
        else getattr(FINETUNING, name)
    p.add_argument("head_run", help="run folder of a head trained on codes (the warm-up head)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--unfreeze-blocks", type=int, default=f("unfreeze_blocks"),
                   help="train the last N blocks of the base (and what follows)")
    g.add_argument("--unfreeze-from", default=None, metavar="LAYER", help="train from this layer on instead")
    p.add_argument("--learning-rate", type=finite_float, default=f("learning_rate"),
                   help="low, so the pretrained filters are not wrecked")
    p.add_argument("--optimizer", default=f("optimizer"), choices=["adam", "rmsprop"],
                   help="optimizer for the unfrozen layers")
    p.add_argument("--epochs", type=int, default=f("epochs"), help="most epochs; early stopping on validation loss")
    p.add_argument("--patience", type=int, default=f("patience"), help="early-stopping patience, epochs")
    p.add_argument("--batch-size", type=int, default=f("batch_size"), help="images per training step")
    p.add_argument("--augment", action="store_true",
                   help="random flip, rotation, zoom and shift of training images (runs the whole network each epoch)")
    p.add_argument("--strength", type=finite_float, default=f("strength"), help="augmentation strength (zoom/shift fraction)")
    p.add_argument("--cache-dir", default=f("cache_dir"), help="where cut-point activations are cached")
    add_positive_class(p)
    add_common_options(p, seed="shuffling, augmentation and initialization",
                       progress="no progress bar / per-epoch lines")


def run(a):
    finetune(a.head_run, unfreeze_blocks=a.unfreeze_blocks if a.unfreeze_from is None else None,
             unfreeze_from=a.unfreeze_from, optimizer=a.optimizer, cache_dir=a.cache_dir, runs_dir=a.runs_dir,
             **training_options(a))
    return 0
