"""Codes -> train -> predict, from Python: ``python examples/quickstart.py [DATA]``.

Caches the codes of DATA (default: the shipped sample, examples/caltech5) under ./cache, trains a
logistic-regression head on them (a run folder under ./runs) and predicts the classes of a few
of its test images with the exported model.
"""
import logging
import sys
from pathlib import Path

import pipeline as cc

logging.basicConfig(level=logging.INFO, format="%(message)s")  # the lines the command line prints

data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "caltech5"
codes = cc.generate_codes(data, progress=False)                        # stage 1: one code set per layer/pooling
codes_set = cc.load_codes(codes[0])
print(f"{len(codes_set)} images, {codes_set.shape[1]} values per code, classes: {', '.join(codes_set.class_names)}")

run = cc.train(codes_set, head="logreg")                                # stage 2: a Run
print(f"test accuracy {run.metrics['accuracy']:.3f}, mean per-class {run.metrics['mean_per_class_accuracy']:.3f}"
      f" -> {run.path}")

folder = data / codes_set.class_names[-1]
rows = cc.predict(run, folder, top_k=2)                                 # exports model.keras on first use
for path, top in rows[:3]:
    print(f"{Path(path).relative_to(data)}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top))
