"""Stage 2: classifier heads on codes, as scikit-learn estimators (softmax, MLP, logistic
regression, prototype), with their training loops and scaling."""

from pipeline.heads._estimators import (
    HEADS,
    LogRegHead,
    MLPHead,
    PrototypeHead,
    SoftmaxHead,
    load_head,
    make_head,
    read_thresholds,
)
from pipeline.heads._scaling import ShrunkScaler

__all__ = ["HEADS", "LogRegHead", "MLPHead", "PrototypeHead", "SoftmaxHead", "load_head", "make_head",
           "read_thresholds", "ShrunkScaler"]
