"""Stage 2: classifier heads on codes, as scikit-learn estimators (softmax, MLP, logistic
regression, prototype), with their training loops and scaling."""

from pipeline.heads._base import best_f1_thresholds, holdout, read_thresholds
from pipeline.heads._keras import MLPHead, SoftmaxHead
from pipeline.heads._logreg import LogRegHead
from pipeline.heads._prototype import PrototypeHead
from pipeline.heads._registry import HEADS, load_head, make_head
from pipeline.heads._probe import linear_probe
from pipeline.heads._scaling import ShrunkScaler
from pipeline.heads._semi import Propagation, Verdict, held_out_gain, propagate, reduced

__all__ = ["HEADS", "best_f1_thresholds", "LogRegHead", "MLPHead", "PrototypeHead", "SoftmaxHead", "holdout", "linear_probe", "load_head", "make_head",
           "read_thresholds", "ShrunkScaler", "Propagation", "Verdict", "held_out_gain", "propagate", "reduced"]
