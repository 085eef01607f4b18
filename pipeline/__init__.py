"""CNN codes: cache frozen-backbone features once, train classifier heads on them in seconds.

The Python API, for notebooks and scripts (each name also lives in its stage's subpackage)::

    import pipeline as cc
    codes = cc.generate_codes("examples/caltech5")          # stage 1: cached codes, their paths
    run = cc.train(codes[0], head="logreg")                 # stage 2: a run folder, its metrics
    run.metrics["accuracy"], run.path
    cc.predict(run, "examples/caltech5/umbrella")           # [(image, [(class, probability), ...]), ...]

Messages go through :mod:`logging` (logger ``pipeline``): ``logging.basicConfig(level="INFO")``
shows what the command line prints.
"""
import importlib

__version__ = "0.1.0"

# Where each public name lives. Loaded on first use (PEP 562), on purpose: every command imports
# this package, and most need only one stage of it.
_API = {
    "generate_codes": "pipeline.codes", "load_codes": "pipeline.codes", "CodeSet": "pipeline.codes",
    "read_folder": "pipeline.data", "LayoutOptions": "pipeline.data",
    "list_backbones": "pipeline.backbones", "list_layers": "pipeline.backbones",
    "train": "pipeline.runs", "sweep": "pipeline.runs", "finetune": "pipeline.runs", "scratch": "pipeline.runs",
    "compare_table": "pipeline.runs", "Run": "pipeline._records",
    "export": "pipeline.deploy", "predict": "pipeline.deploy", "audit": "pipeline.quality",
    "SoftmaxHead": "pipeline.heads", "MLPHead": "pipeline.heads", "LogRegHead": "pipeline.heads",
    "PrototypeHead": "pipeline.heads", "load_head": "pipeline.heads",
    "UserError": "pipeline.errors", "ParameterError": "pipeline.errors",
}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
