"""Export a head trained on cached codes as one deployable .keras model (preprocessing + base +
head). Loadable with plain keras.saving.load_model; class names are stored inside the file
(cnn_codes.json)."""
from ..models import export_head_run

HELP = "export a head run as one deployable .keras model"


def add_arguments(p):
    p.add_argument("run", help="a run folder of a head trained on codes")
    p.add_argument("--out", default=None, help="model file (default: RUN/model.keras)")


def run(a):
    print(f"exported -> {export_head_run(a.run, out=a.out)}")
    return 0
