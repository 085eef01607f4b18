"""Stage 2: classifier heads on codes, as scikit-learn estimators (softmax, MLP, logistic
regression, prototype), with their training loops and scaling."""

from pipeline.heads._estimators import (
    HEADS,
    LogRegHead,
    MLPHead,
    PrototypeHead,
    SoftmaxHead,
    holdout,
    load_head,
    make_head,
    read_thresholds,
)
from pipeline.heads._probe import linear_probe
from pipeline.heads._scaling import ShrunkScaler
from pipeline.heads._semi import Propagation, Verdict, held_out_gain, propagate, reduced

__all__ = ["HEADS", "LogRegHead", "MLPHead", "PrototypeHead", "SoftmaxHead", "holdout", "linear_probe", "load_head", "make_head",
           "read_thresholds", "ShrunkScaler", "Propagation", "Verdict", "held_out_gain", "propagate", "reduced"]
