"""Stage 1: cache CNN codes of every image under DATA in HDF5, with the labels its layout gives.
Run it again to resume an interrupted run or to take in added, changed or removed images; only
what is missing is computed."""
import ctypes
import dataclasses

from pipeline.backbones import DEFAULT_BACKBONE, POOLINGS, REGISTRY, list_layers
from pipeline.cli import add_common_options, add_layout_options, add_setting_options, default, layout_options
from pipeline.codes import ENGINES, RUNTIMES, CodeIdentity, ComputeOptions, generate_codes
from pipeline.data import parse_split

HELP = "stage 1: cache the CNN codes of every image of a folder"

# TensorFlow is imported (quietly) only where a Keras model is built: an update whose converted
# OpenVINO model is cached never loads it.
NEEDS_TENSORFLOW = False


def add_arguments(p):
    g = lambda name: default(generate_codes, name)
    c = lambda name: getattr(ComputeOptions, name)
    p.add_argument("--data", default="examples/caltech5",
                   help="image folder: class folders, split folders, images with a labels file, ... (docs/data.md)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=list(REGISTRY), metavar="NAME",
                   help="conv base: " + ", ".join(REGISTRY))
    p.add_argument("--layer", nargs="+", default=None, metavar="LAYER",
                   help="layer(s) whose output to cache, all in one pass; default: the final conv block")
    p.add_argument("--pooling", nargs="+", default=["avg"], choices=POOLINGS,
                   help="per layer: flatten (the classic CNN code), avg or max (global pooling)")
    p.add_argument("--weights", default=g("weights"),
                   help="imagenet, none (random, for tests) or the path of a Keras weights file")
    p.add_argument("--image-size", type=int, default=None, help="square input size in pixels; default: the backbone's own")
    p.add_argument("--cache-dir", default=g("cache_dir"), help="where code files go")
    p.add_argument("--batch-size", type=int, default=c("batch_size"), help="images per forward pass")
    p.add_argument("--engine", default=c("engine"), choices=ENGINES,
                   help="who computes: local (this process) or ray (a Ray actor pool, here or on a cluster; "
                        "pip install 'cnn-codes[ray]'); the code set is the same either way")
    p.add_argument("--workers", type=int, default=c("workers"),
                   help="model workers, each with its own copy of the model (local: threads; ray: actors, one GPU "
                        "each where there are GPUs)")
    p.add_argument("--decode-threads", type=int, default=None,
                   help="image decoding threads per worker (default: one per core, at most 8)")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: the address of a running Ray cluster to join (default: start a local one)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="CLASS",
                   help="classes to leave out (their images are computed, unlabelled)")
    add_layout_options(p)
    p.add_argument("--split", default=None,
                   help="per-class train/val/test percentages of the parts the layout does not give, e.g. 70/30 for "
                        "no validation set (default: the stored split of an existing code set, else 70/15/15)")
    p.add_argument("--resplit", action="store_true",
                   help="draw another split than the stored one (runs made before tested on other images)")
    p.add_argument("--partition-size", type=int, default=None,
                   help="images per partition, the unit of work of a worker and of the part files (default: about "
                        "1/16 of the work, 512-8192, and larger where the work would be more than a quarter of "
                        "--max-parts partitions)")
    p.add_argument("--max-parts", type=int, default=c("max_parts"),
                   help="merge the smallest part files of a code set when it has more than this many (HDF5 keeps "
                        "each one open while the code set is read)")
    p.add_argument("--overwrite", action="store_true", help="recompute everything, replacing existing code files")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every image and recompute those whose bytes changed although their size and "
                        "modification time did not (normally an image counts as changed when its size changes, or "
                        "its modification time and its bytes do)")
    p.add_argument("--runtime", default=c("runtime"), choices=RUNTIMES,
                   help="where the forward pass runs: auto is OpenVINO on a machine where TensorFlow sees no GPU "
                        "and OpenVINO is installed, else TensorFlow (both give the same codes within 1e-4)")
    add_setting_options(p)
    p.add_argument("--no-wait", action="store_true",
                   help="if another run is writing the same code set, stop at once instead of waiting for it")
    p.add_argument("--list-layers", action="store_true", help="print the backbone's layer names and exit")
    add_common_options(p, seed="the stratified split (default: the stored one, else 0)", runs_dir=False,
                       seed_default=None)


def run(a):
    if a.list_layers:
        for name, shape, suggested in list_layers(a.backbone, a.image_size):
            print(f"{name:40s} {shape}" + ("  (suggested)" if suggested else ""))
        return 0
    compute_codes(a)
    return 0


def keep_freed_blocks_returnable() -> None:
    """Fix glibc's size above which a block gets pages of its own (given back when freed) at its
    default, 128 KB, for this process, as ``MALLOC_MMAP_THRESHOLD_=131072`` would. Left alone, glibc
    raises it to the largest block freed so far: stage 1's listing of a million images frees blocks
    of tens of MB, and the computing's buffers then stayed in the heap (9-15 MB more at a million
    images than at 200,000; docs/benchmarks.md). Only in this command's own process: the library
    leaves the allocator of a process that imports it (a notebook's) alone, and the other commands
    run without it (every large block its own pages cost a streamed head 1.2-1.4x its time).
    Elsewhere than glibc: nothing to do."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # (glibc's malloc.h)


def compute_codes(a, reading=None, progress=None) -> list:
    """Stage 1 as the options ``a`` of this command ask (also for commands that start with it);
    ``reading``, ``progress``: other layout options, progress bars than those given."""
    settings = {f.name: getattr(a, f.name) for f in CodeIdentity.settings()}
    compute = ComputeOptions(**{f.name: getattr(a, f.name) for f in dataclasses.fields(ComputeOptions)
                                if f.name not in ("wait",)}, wait=not a.no_wait)
    return generate_codes(a.data, a.backbone, a.layer, a.pooling, a.weights, a.image_size, a.cache_dir, a.exclude,
                          parse_split(a.split) if a.split else None, a.seed, resplit=a.resplit,
                          progress=not a.no_progress if progress is None else progress, compute=compute,
                          reading=layout_options(a) if reading is None else reading, **settings)
