"""Export a run's model: one deployable .keras model (preprocessing + base + head; loadable with plain
keras.saving.load_model, class names inside as cnn_codes.json), and beside it TensorFlow Lite (float
and int8 dynamic-range) and ONNX files, each checked against the Keras model on the run's test
images (see pipeline.deploy)."""
from pipeline.cli import add_common_options
from pipeline.deploy import FORMATS, export

HELP = "export a run as a deployable .keras model, TensorFlow Lite and ONNX files"


def add_arguments(p):
    p.add_argument("run", help="a run folder: a head trained on codes, a fine-tuned or a from-scratch model")
    p.add_argument("--out", default=None, help="model file of a head run (default: RUN/model.keras); the other "
                                               "formats are written beside it")
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=("keras", *FORMATS),
                   help="what to write besides model.keras (keras: that file only)")
    p.add_argument("--check-images", type=int, default=None,
                   help="check the exports on this many of the run's test images (default: all; 0: no check)")
    add_common_options(p, runs_dir=False)


def run(a):
    export(a.run, a.formats, out=a.out, check_images=a.check_images, progress=not a.no_progress)
    return 0
