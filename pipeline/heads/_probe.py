"""The quick linear probe: a logistic regression on codes, fitted in a second, that the audit's
label model, the labelling app's suggestions and progress, the choice of what to label next and
the semi-supervised head's verdict all use (each with the regularisation it was measured with)."""
from __future__ import annotations


def linear_probe(C: float = 1.0, *, standardize: bool = False, multi_label: bool = False, max_iter: int = 500,
                 seed: int | None = None):
    """An unfitted scikit-learn classifier: logistic regression with inverse regularisation ``C``,
    on standardized codes if ``standardize`` (codes of many small values: else C regularises
    them to nothing), one per label (one-vs-rest) if ``multi_label``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    if multi_label:
        model = OneVsRestClassifier(model)
    return make_pipeline(StandardScaler(), model) if standardize else model
