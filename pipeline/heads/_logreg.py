"""The logistic-regression head: scikit-learn's, its regularization chosen on the validation codes."""

import copy
import warnings
from pathlib import Path

import numpy as np

from pipeline.heads._base import _arrays, _Head, _is_seed, _keras_seed, _require, _sigmoid, holdout
from pipeline.heads._keras import SoftmaxHead
from pipeline.heads._scaling import (
    ShrunkScaler,
    streaming_standardization,
)
from pipeline.heads._trainloop import train_streamed

# Deferred on purpose: scikit-learn, Keras are imported inside the functions that use them, so that
# commands and workers that never need them start without loading them.



class LogRegHead(_Head):
    """scikit-learn multinomial logistic regression (L-BFGS) on standardized codes.

    The inverse regularization strength C is chosen from ``Cs`` by accuracy on the validation
    set (fits along increasing C warm-start from the previous one). Without a validation set,
    10% of the training codes are held out to choose C, then the model is refit on all of them;
    where a class has a single image, or only one C is given, the largest C is used.
    """

    name = "logreg"

    def __init__(self, Cs=(0.001, 0.01, 0.1, 1.0), max_iter=300, class_weight=False, seed=0, verbose=0):
        self.Cs, self.max_iter, self.class_weight, self.seed, self.verbose = Cs, max_iter, class_weight, seed, verbose

    def _check_params(self):
        _require(len(self.Cs) > 0 and all(0 < c < np.inf for c in self.Cs), "Cs", "one or more finite numbers > 0",
                 self.Cs)
        _require(_is_seed(self.seed), "seed", "a whole number from 0 to 2**32 - 1", self.seed)
        _require(self.max_iter >= 1, "max_iter", ">= 1", self.max_iter)

    def _pipe(self, C):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        return make_pipeline(ShrunkScaler(), LogisticRegression(
            C=C, max_iter=self.max_iter, class_weight="balanced" if self.class_weight else None,
            random_state=self.seed))

    def _fit(self, X, y, X_val, y_val):

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.filterwarnings("ignore", "The number of unique classes is greater than 50%")
            X_fit, y_fit, X_val, y_val = holdout(X, y, X_val, y_val, seed=self.seed)
            best, scores, best_model = max(self.Cs), {}, None
            if X_val is not None and len(self.Cs) > 1:
                # Along increasing C, each fit starts from the previous solution (warm start).
                pipe = self._pipe(min(self.Cs))
                pipe.named_steps["logisticregression"].warm_start = True
                for C in sorted(self.Cs):
                    pipe.set_params(logisticregression__C=C).fit(X_fit, y_fit)
                    scores[C] = float((pipe.predict(X_val) == y_val).mean())
                    if best_model is None or scores[C] > scores[best]:  # ties: stronger regularization
                        best, best_model = C, copy.deepcopy(pipe)
                self.history_ = {"val_accuracy_by_C": {str(c): v for c, v in scores.items()}}
            if X_fit is X and best_model is not None:  # the given validation set: keep the model fitted with the best C
                best_model.named_steps["logisticregression"].warm_start = False
                self.model_ = best_model
            else:  # held-out part of the training codes (or no choice at all): refit on everything
                self.model_ = self._pipe(best).fit(X, y)
            self.C_ = best

    def _fit_multi(self, X, Y, X_val, Y_val):
        """One-vs-rest: a binary logistic regression per label on the standardized codes, C chosen
        from ``Cs`` by mean average precision on the validation codes (the largest C without).
        A label that is always (or never) present gets a constant probability."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import average_precision_score

        scaler = ShrunkScaler().fit(X)
        Z = scaler.transform(X)
        Z_val = scaler.transform(X_val) if X_val is not None else None

        def fit(C):
            coef, intercept = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
            for j in range(Y.shape[1]):
                if Y[:, j].min() == Y[:, j].max():
                    intercept[j] = 8.0 if Y[0, j] else -8.0
                    continue
                clf = LogisticRegression(C=C, max_iter=self.max_iter, random_state=self.seed,
                                         class_weight="balanced" if self.class_weight else None).fit(Z, Y[:, j])
                coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
            return coef, intercept

        scored = [j for j in range(Y.shape[1]) if Y_val is not None and 0 < Y_val[:, j].sum() < len(Y_val)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if scored and len(self.Cs) > 1:
                scores, fits = {}, {}
                for C in sorted(self.Cs):
                    fits[C] = fit(C)
                    P = _sigmoid(Z_val @ fits[C][0].T + fits[C][1])
                    scores[C] = float(np.mean([average_precision_score(Y_val[:, j], P[:, j]) for j in scored]))
                best = max(sorted(self.Cs), key=lambda c: scores[c])  # ties: stronger regularization
                coef, intercept = fits[best]
                self.history_ = {"val_mAP_by_C": {str(c): v for c, v in scores.items()}}
            else:
                best = max(self.Cs)
                coef, intercept = fit(best)
        self.C_ = best
        self.model_ = self._pipe(best)
        clf = self.model_[-1]
        self.model_.steps[0] = (self.model_.steps[0][0], scaler)
        clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, np.arange(Y.shape[1])
        clf.n_features_in_ = X.shape[1]
        clf.n_iter_ = np.asarray([0])

    def _fit_stream(self, stream, val):
        """Out of core: the same multinomial model (softmax of a linear function of standardized
        codes, L2 penalty 1 / (C n)) fitted by minibatch gradient descent on the streamed codes,
        with C the largest of ``Cs`` (no search: each C would be another pass over the data).
        It is then held as the scikit-learn pipeline the in-memory fit gives, so saving,
        exporting and predicting are the same."""
        _keras_seed(self.seed)
        n_classes, C = len(self.classes_), max(self.Cs)
        stats = streaming_standardization(stream.blocks())
        linear = SoftmaxHead(learning_rate=1e-3, batch_size=256, epochs=min(self.max_iter, 30), patience=3,
                             min_delta=1e-4, seed=self.seed)
        model = linear._build(stream, n_classes, stats=stats, l2=1.0 / (2 * C * len(stream)))
        self.history_ = train_streamed(
            model, stream, val, classes=self.classes_, epochs=linear.epochs, batch_size=linear.batch_size,
            patience=linear.patience, min_delta=linear.min_delta, seed=self.seed, class_weight=self.class_weight,
            verbose=self.verbose)
        W, b = model.get_layer("softmax").get_weights()
        present = np.searchsorted(self.classes_, np.unique(stream.y))  # positions, as the in-memory fit has
        coef, intercept = W.T[present].astype(np.float64), b[present].astype(np.float64)
        if len(present) == 2:  # scikit-learn's binary form: sigmoid(z1 - z0) == softmax([z0, z1])[1]
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self.C_ = C
        self.model_ = self._pipe(C)
        scaler, clf = self.model_[0], self.model_[-1]
        scaler.mean_, scaler.var_ = stats
        scaler.scale_ = np.sqrt(stats[1])
        scaler.n_features_in_ = clf.n_features_in_ = stream.shape[1]
        scaler.n_samples_seen_ = len(stream)
        clf.coef_, clf.intercept_, clf.classes_ = coef, intercept, present
        clf.n_iter_ = np.asarray([len(self.history_["loss"])])

    def _proba(self, X) -> np.ndarray:
        if getattr(self, "multi_label_", False):
            scaler, clf = self.model_[0], self.model_[-1]
            return _sigmoid(scaler.transform(X) @ clf.coef_.T + clf.intercept_) if len(X) else np.zeros(
                (0, len(self.classes_)), np.float32)
        out = np.zeros((len(X), len(self.classes_)), np.float32)
        if len(X):
            out[:, self.model_.classes_] = self.model_.predict_proba(X)  # classes absent from training: 0
        return out

    def to_keras(self):
        """One Dense softmax layer (multi-label: sigmoid) with the standardization folded into its weights."""
        import keras

        scaler, clf = self.model_[0], self.model_[-1]
        coef, intercept = clf.coef_, clf.intercept_
        if getattr(self, "multi_label_", False):
            scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
            inputs = keras.Input((self.n_features_in_,), name="codes")
            dense = keras.layers.Dense(len(self.classes_), activation="sigmoid", name="sigmoid")
            model = keras.Model(inputs, dense(inputs), name="head")
            dense.set_weights([(coef / scale).T.astype(np.float32),
                               (intercept - (coef / scale) @ scaler.mean_).astype(np.float32)])
            return model
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([0, z])
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
        n_classes = len(self.classes_)
        W = np.zeros((self.n_features_in_, n_classes), np.float32)
        b = np.full(n_classes, -1e4, np.float32)  # classes never seen in training: probability 0
        W[:, clf.classes_] = (coef / scale).T
        b[clf.classes_] = intercept - (coef / scale) @ scaler.mean_
        inputs = keras.Input((self.n_features_in_,), name="codes")
        dense = keras.layers.Dense(n_classes, activation="softmax", name="softmax")
        model = keras.Model(inputs, dense(inputs), name="head")
        dense.set_weights([W, b])
        return model

    def _state(self) -> dict:
        return {"C_": self.C_}

    def _save_model(self, folder: Path) -> Path:
        scaler, clf = self.model_[0], self.model_[-1]
        path = folder / "head.npz"
        np.savez(path, mean=scaler.mean_, var=scaler.var_, scale=scaler.scale_, coef=clf.coef_,
                 intercept=clf.intercept_, classes=clf.classes_, n_iter=np.asarray(clf.n_iter_))
        return path

    def _restore(self, folder: Path, state: dict) -> None:
        mean, var, scale, coef, intercept, classes, n_iter = _arrays(
            folder, "mean", "var", "scale", "coef", "intercept", "classes", "n_iter")
        self.C_ = float(state["C_"])
        self.model_ = self._pipe(self.C_)
        scaler, clf = self.model_[0], self.model_[-1]
        scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
        scaler.n_features_in_ = clf.n_features_in_ = coef.shape[1]
        scaler.n_samples_seen_ = 0
        clf.coef_, clf.intercept_, clf.classes_, clf.n_iter_ = coef, intercept, classes, n_iter
