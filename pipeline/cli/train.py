"""Stage 2: train a softmax, MLP or logistic-regression head on cached CNN codes and evaluate it.
The code file is named by --codes, or found from the same options that made it with
`cnn-codes codes`. Writes a run folder with the head, record.json, report.txt, confusion.png
and history.png (roc_pr.png for two classes)."""
from pipeline.cli import add_code_options, add_common_options, code_paths, default, finite_float, parse_size
from pipeline.heads import HEADS, LogRegHead, MLPHead, SoftmaxHead
from pipeline.runs import check_folds, train

HELP = "stage 2: train a head on cached codes and evaluate it"

KERAS_OPTIONS = ("epochs", "learning_rate", "batch_size", "patience", "min_delta")


def add_head_options(p):
    """Options of the heads, their defaults the heads' own."""
    k = lambda name: default(SoftmaxHead.__init__, name)
    p.add_argument("--epochs", type=int, default=k("epochs"), help="Keras heads: most epochs (early stopping ends sooner)")
    p.add_argument("--learning-rate", type=finite_float, default=k("learning_rate"), help="Keras heads: Adam learning rate")
    p.add_argument("--batch-size", type=int, default=k("batch_size"), help="Keras heads: batch size")
    p.add_argument("--patience", type=int, default=k("patience"), help="Keras heads: early-stopping patience, epochs")
    p.add_argument("--min-delta", type=finite_float, default=k("min_delta"),
                   help="Keras heads: smallest loss improvement that counts for early stopping")
    p.add_argument("--hidden", type=int, nargs="+", default=list(default(MLPHead.__init__, "hidden")),
                   help="mlp: hidden layer sizes")
    p.add_argument("--dropout", type=finite_float, default=default(MLPHead.__init__, "dropout"),
                   help="mlp: dropout after each hidden layer")
    p.add_argument("--Cs", type=finite_float, nargs="+", default=list(default(LogRegHead.__init__, "Cs")),
                   help="logreg: inverse regularization strengths to choose from on the validation set")
    p.add_argument("--class-weight", action="store_true", help="weight classes inversely to their frequency")


def head_params(a, head: str) -> dict:
    """The parameters of ``head`` given on the command line."""
    common = dict(class_weight=a.class_weight, seed=a.seed)
    keras_opts = {k: getattr(a, k) for k in KERAS_OPTIONS}
    return {"softmax": dict(common, **keras_opts),
            "mlp": dict(common, **keras_opts, hidden=tuple(a.hidden), dropout=a.dropout),
            "logreg": dict(common, Cs=tuple(a.Cs)),
            "prototype": {}}[head]


def add_positive_class(p):
    p.add_argument("--positive-class", default=None, metavar="CLASS",
                   help="two classes: the class whose ROC AUC and precision-recall curve are reported "
                        "(default: the second class name in sorted order)")


def add_arguments(p):
    p.add_argument("--head", default="softmax", choices=list(HEADS), help="which head to train")
    add_code_options(p, join=True)
    add_head_options(p)
    add_positive_class(p)
    p.add_argument("--memory-limit", type=parse_size, default=None, metavar="SIZE",
                   help="memory the codes may take (e.g. 4G, 500M, 25%% of RAM); larger code sets are streamed from "
                        "the file (default: half the RAM)")
    p.add_argument("--cv", type=int, default=None, metavar="K",
                   help="K-fold cross-validation over every labelled image instead of the stored split (small sets): "
                        "out-of-fold predictions for every image, the head saved trained on all of them")
    p.add_argument("--unlabelled", action="store_true",
                   help="learn from the code set's unlabelled images too (labels spread over the codes' neighbours, "
                        "then the head on labelled and pseudo-labelled codes), where held-out labels find it better")
    add_common_options(p, seed="the head's initialization and shuffling (and the folds of --cv)", progress=None)


def run(a):
    check_folds(a.cv)  # (before the code set is looked for)
    codes = code_paths(a)
    train(codes if len(codes) > 1 else codes[0], a.head, runs_dir=a.runs_dir, positive_class=a.positive_class,
          memory_limit=a.memory_limit, cv=a.cv, unlabelled=a.unlabelled, **head_params(a, a.head))
    return 0
