#!/usr/bin/env python
"""Export a head trained on cached codes as one deployable .keras model (preprocessing + base + head)."""
import argparse

from pipeline.errors import quiet_tensorflow, run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__ + " Loadable with plain keras.saving.load_model; class "
                                "names are stored inside the file (cnn_codes.json).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", help="a run folder written by train_head.py")
    p.add_argument("--out", default=None, help="model file (default: RUN/model.keras)")
    a = p.parse_args(argv)
    quiet_tensorflow()
    from pipeline.models import export_head_run

    print(f"exported -> {export_head_run(a.run, a.out)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
