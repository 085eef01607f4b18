"""What the labelling app knows and does, without the web: the codes of every image, the labels
file and its decisions (with undo), the next batch, the current model's suggestions, the review's
findings and the progress curve. Thread-safe: requests from two tabs and the background refresh
take one lock for every change, so no decision is lost.

The codes come from stage 1 (``make_codes``: what is missing is computed, labels and split live
in the index only). A decision changes the labels file at once (written whole); the code set
follows when the background refresh runs stage 1 again (0 images to compute), which also takes
in images added to the folder meanwhile.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.data import (
    UNLABELLED,
    Journal,
    LabelsTable,
    LayoutOptions,
    check_class_name,
    excluded_file,
    file_state,
    labels_file_for,
    walk_images,
)
from pipeline.errors import UserError, one_line
from pipeline.heads import linear_probe
from pipeline.label._select import _reduced, select_group, select_next
from pipeline.reports import mean_ap_interval, wilson

logger = logging.getLogger(__name__)

REVIEW_LIMIT = 60  # findings of each kind on the review page


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision, as undo needs it: the image's labels and exclusion before and after, and
    the tab that made it ("" where none was named)."""

    id: int
    path: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    was_excluded: bool
    excluded: bool
    tab: str = ""


@dataclasses.dataclass(frozen=True)
class Event:
    """Something every open page should see: a decision or an undo (from any tab) or the labels
    file changed on disk; ``version`` numbers them in order."""

    version: int
    kind: str                 # decide, undo, file
    text: str
    path: str = ""
    labels: tuple[str, ...] = ()
    excluded: bool = False
    tab: str = ""


EVENTS_KEPT = 500  # the newest events a page polling /api/state can catch up on
HANDED_FOR = 600   # seconds a batch given to one tab is kept from the others


@dataclasses.dataclass
class _View:
    """The in-memory labels over the codes, in the shape :func:`select_next` reads."""

    path: Path
    paths: list[str]
    class_names: list[str]
    multi_label: bool
    y: np.ndarray
    split: np.ndarray
    X: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def rows(self, mask) -> np.ndarray:
        return self.X[mask]


class LabelSession:
    """``make_codes(options)``: stage 1 on the folder with these layout options, returning the
    code set (a :class:`~pipeline.codes.CodeSet`); ``labels_path``: where decisions go."""

    def __init__(self, root, labels_path, make_codes: Callable, options: LayoutOptions,
                 strategy: str = "auto", seed: int = 0, batch: int = 12, codes_set=None):
        self.root, self.labels_path = Path(root), Path(labels_path)
        self.make_codes, self.options = make_codes, options
        self.strategy, self.seed, self.batch = strategy, seed, batch
        self.lock = threading.RLock()
        self.history: list[Decision] = []
        self.skipped: set[str] = set()
        self.reviewed: set[str] = set()
        self.curve: list[tuple[int, float, float, float]] = []
        self.note = ""
        self.events: list[Event] = []
        self.handed: dict[str, tuple[float, set[str]]] = {}  # the batch each tab was last given, and when
        self.version = 0
        self.journal = Journal(self.labels_path)
        self._on_disk: tuple = ()  # the labels file's state when the app last read or wrote it
        self._dirty = False
        self._next_id = 1
        self._stop = threading.Event()
        self._load(codes_set if codes_set is not None else make_codes(options))

    # ---------------------------------------------------------------- codes and labels

    def _layout(self) -> LayoutOptions:
        """Once the app has a labels file, stage 1 reads that file (whatever else the folder holds)."""
        if self.labels_path.is_file():
            return dataclasses.replace(self.options, layout="auto", labels=str(self.labels_path), label_pattern=None)
        return self.options

    def _load(self, cs) -> None:
        X = cs.rows(np.ones(len(cs), bool)).astype(np.float32)
        given = {}
        for i, p in enumerate(cs.paths):
            if cs.split[i] != UNLABELLED:
                given[p] = ([cs.class_names[j] for j in np.flatnonzero(cs.y[i])] if cs.multi_label
                            else [cs.class_names[cs.y[i]]])
        Z = _reduced(X, self.seed) if len(X) > 1 else X  # before the lock: decisions go on meanwhile
        with self.lock:  # the file read under the lock: a decision written meanwhile is in it
            table = LabelsTable(self.labels_path, self.root, self._layout(), seed=given, multi=cs.multi_label)
            self.codes_path, self.paths, self.X, self.Z = cs.path, list(cs.paths), X, Z
            self.stored_split = np.asarray(cs.split)  # the code set's, for leakage across it
            self.where = {p: i for i, p in enumerate(self.paths)}
            self.table = table
            self._on_disk = self._state_on_disk()
            self._add_classes(list(cs.class_names) + [x for v in table.labels().values() for x in v])
            self._model = None

    def _add_classes(self, names) -> None:
        """Classes keep the order they first appeared in (the digit keys stay put); new ones go last."""
        known = list(getattr(self, "classes", []))
        for name in names:
            if name not in known:
                known.append(name)
        self.classes = known

    def _state_on_disk(self) -> tuple:
        return file_state(self.labels_path), file_state(excluded_file(self.labels_path))

    def _sync(self) -> int:
        """The labels file is the truth: read it again if it changed on disk since the app last
        read or wrote it (an edit beside the app), before any decision is applied to it. Returns
        how many images' labels changed."""
        state = self._state_on_disk()
        if state == self._on_disk:
            return 0
        old, was = self.table.labels(), set(self.table.excluded)
        self.table = LabelsTable(self.labels_path, self.root, self._layout(), multi=self.multi)
        self._on_disk = state
        new = self.table.labels()
        changed = sum(old.get(p) != new.get(p) for p in set(old) | set(new)) + len(was ^ self.table.excluded)
        self._add_classes(x for v in new.values() for x in v)
        self._model, self._dirty = None, True
        if changed:
            self._event("file", f"{self.labels_path.name} changed: {changed} row(s) reloaded")
        return changed

    def _event(self, kind: str, text: str, **what) -> Event:
        self.version += 1
        e = Event(self.version, kind, text, **what)
        self.events = self.events[-(EVENTS_KEPT - 1):] + [e]
        return e

    def state(self, since: int = 0) -> dict:
        """What changed since ``version`` ``since``: the events a page has not seen (decisions of
        other tabs, undos, the file changed on disk), and the counts."""
        with self.lock:
            self._sync()
            fresh = [dataclasses.asdict(e) for e in self.events if e.version > since]
            labelled = sum(1 for p, v in self.table.labels().items() if p in self.where and (v or self.multi))
            return {"version": self.version, "events": fresh, "labelled": labelled, "images": len(self.paths)}

    def _write_or_undo(self, d: Decision, kind: str) -> None:
        """The labels file written whole, then the decision journaled (flushed to disk). A write
        that fails (the file a folder, a read-only disk, the data folder moved) is one message on
        the page and in the terminal, and the decision is not counted: the table goes back to what
        is on disk."""
        try:
            self.table.write()
        except (OSError, UserError) as exc:
            why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
            try:
                self.table = LabelsTable(self.labels_path, self.root, self._layout(), multi=self.multi)
            except (OSError, UserError):
                pass  # (unreadable too: the next decision says so again)
            self._on_disk = ()
            message = f"{self.labels_path}: the decision on {d.path} was not saved ({one_line(why)})"
            logger.warning(f"warning: {message}")
            raise UserError(message) from None
        self._on_disk = self._state_on_disk()
        try:
            self._journal(d, kind)
        except OSError as exc:  # the decision is in the labels file: kept, and said
            logger.warning(f"warning: {self.journal.path}: a decision was not journaled ({exc.strerror or exc})")

    def _journal(self, d: Decision, kind: str) -> None:
        self.journal.append({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                             "kind": kind, "id": d.id, "image": d.path,
                             "before": list(d.before) if kind == "decide" else list(d.after),
                             "after": list(d.after) if kind == "decide" else list(d.before),
                             "excluded_before": d.was_excluded if kind == "decide" else d.excluded,
                             "excluded": d.excluded if kind == "decide" else d.was_excluded, "tab": d.tab})

    @property
    def multi(self) -> bool:
        return self.table.multi

    def labels(self) -> dict[str, list[str]]:
        with self.lock:
            return {p: v for p, v in self.table.labels().items() if p in self.where}

    def view(self) -> _View:
        with self.lock:
            labels = self.labels()
            names = self.classes
            col = {c: j for j, c in enumerate(names)}
            n = len(self.paths)
            split = np.full(n, UNLABELLED, np.int8)
            if self.multi:
                y = np.zeros((n, max(1, len(names))), np.uint8)
            else:
                y = np.full(n, -1, np.int64)
            for p, v in labels.items():
                i = self.where[p]
                if not v and not self.multi:
                    continue
                split[i] = 0
                if self.multi:
                    y[i, [col[x] for x in v]] = 1
                else:
                    y[i] = col[v[0]]
            # the reduced codes: select_next reduces what it is given, and these are reduced already
            return _View(self.codes_path, self.paths, list(names), self.multi, y, split, self.Z)

    # ---------------------------------------------------------------- decisions

    def decide(self, path: str, labels: list[str] | None, exclude: bool = False, tab: str = "",
               reviewed: bool = False) -> Decision:
        """Give ``path`` these labels (or exclude it) in the labels file as it is on disk now,
        write it whole, journal the decision and remember it for undo. ``reviewed``: made on the
        review page, whose finding it settles (the review hides it); the label page's decisions
        stay under review, so a wrong key press can still be flagged."""
        with self.lock:
            if path not in self.where:
                raise UserError(f"{path}: not an image of this data set")
            labels = [check_class_name(x, self.multi) for x in (labels or [])]
            self._sync()
            before = tuple(self.table.labels().get(path, []))
            was_excluded = path in self.table.excluded
            self.table.set(path, [] if exclude else labels, excluded=exclude)
            after = tuple(self.table.labels().get(path, []))  # (as the file reads it back: a label set sorted)
            d = Decision(self._next_id, path, before, after, was_excluded, exclude, tab)
            self._write_or_undo(d, "decide")
            self._add_classes(labels)
            self._next_id += 1
            self.history.append(d)
            self.skipped.discard(path)
            if reviewed:
                self.reviewed.add(path)
            self._model, self._dirty = None, True
            self._event("decide", f"{path}: " + ("excluded" if exclude else ", ".join(labels) or "no label"),
                        path=path, labels=d.after, excluded=exclude, tab=tab)
            return d

    def undo(self, decision_id: int | None = None, tab: str | None = None) -> Decision | None:
        """Take back a decision (by id; without one, the last decision of ``tab``, or the last
        of all without a tab): the image gets what it had before, but only while it still holds
        what the decision wrote; otherwise a :class:`UserError` says who changed it since, and
        nothing changes."""
        with self.lock:
            self._sync()
            if decision_id is None:
                mine = [x for x in self.history if tab is None or x.tab == tab]
                if not mine:
                    return None
                d = mine[-1]
            else:
                d = next((x for x in self.history if x.id == decision_id), None)
                if d is None:
                    raise UserError(f"no decision {decision_id} to undo")
            now = tuple(self.table.labels().get(d.path, []))
            if now != d.after or (d.path in self.table.excluded) != d.excluded:
                later = [x for x in self.history if x.path == d.path and x.id > d.id]
                who = ("another tab" if later[-1].tab != d.tab else "a later decision of this tab") if later \
                    else f"an edit of {self.labels_path.name}"
                shown = "excluded" if d.path in self.table.excluded else ", ".join(now) or "no label"
                raise UserError(f"{d.path} was changed since by {who} (now: {shown}): nothing undone")
            self.table.set(d.path, list(d.before), excluded=d.was_excluded)
            self._write_or_undo(d, "undo")
            self.history.remove(d)
            self.reviewed.discard(d.path)
            self._model, self._dirty = None, True
            self._event("undo", f"{d.path}: back to " + ("excluded" if d.was_excluded else ", ".join(d.before)
                                                         or "no label"),
                        path=d.path, labels=d.before, excluded=d.was_excluded, tab=d.tab)
            return d

    def skip(self, path: str) -> None:
        with self.lock:
            self.skipped.add(path)

    def add_class(self, name: str) -> str:
        with self.lock:
            name = check_class_name(name, self.multi)
            self._add_classes([name])
            return name

    # ---------------------------------------------------------------- the model and the next batch

    def _fit(self, view: _View):
        """A logistic regression on the labelled codes (reduced), or None while it cannot learn."""
        if self._model is not None:
            return self._model
        lab = view.split != UNLABELLED
        if self.multi:
            keep = view.y[lab].min(0) != view.y[lab].max(0) if lab.sum() else np.zeros(0, bool)
            if lab.sum() < 2 or not keep.any():
                return None
            model = linear_probe(multi_label=True).fit(self.Z[lab], view.y[lab][:, keep])
            self._model = (model, np.flatnonzero(keep))
        else:
            if len(np.unique(view.y[lab])) < 2:
                return None
            model = linear_probe().fit(self.Z[lab], view.y[lab])
            self._model = (model, model.classes_)
        return self._model

    def suggest(self, rows: np.ndarray, view: _View) -> list[dict]:
        """The model's class probabilities for these rows: for each, the classes most likely first."""
        fitted = self._fit(view)
        out = []
        if fitted is None:
            return [{"suggested": [], "proba": {}} for _ in rows]
        model, cols = fitted
        P = model.predict_proba(self.Z[rows])
        for p in P:
            proba = {view.class_names[c]: float(v) for c, v in zip(cols, p)}
            if self.multi:
                suggested = [k for k, v in proba.items() if v >= 0.5]
            else:
                suggested = [max(proba, key=proba.get)]
            out.append({"suggested": suggested, "proba": dict(sorted(proba.items(), key=lambda kv: -kv[1])[:5])})
        return out

    def next_batch(self, n: int | None = None, taken=(), tab: str = "") -> dict:
        """The next images to label (none already labelled, skipped, excluded, in ``taken`` or
        handed to another tab within the last :data:`HANDED_FOR` seconds: two tabs labelling at
        once get different images), each with the current model's suggestion."""
        with self.lock:
            self._sync()
            view = self.view()
            now = time.monotonic()
            self.handed = {t: (when, paths) for t, (when, paths) in self.handed.items() if now - when < HANDED_FOR}
            elsewhere = set().union(*(paths for t, (_, paths) in self.handed.items() if t != tab))
            skip = {self.where[p] for p in set(self.skipped) | set(self.table.excluded) | set(taken) | elsewhere
                    if p in self.where}
            pool = len(set(np.flatnonzero(view.split == UNLABELLED).tolist()) - skip)
            if pool <= 0:
                return {"images": [], "strategy": None, "pool": 0}
            if self.multi and not (view.split != UNLABELLED).any() and not view.class_names:
                view.y = np.zeros((len(view.paths), 1), np.uint8)
            choice = select_next(view, int(n or self.batch), self.strategy, self.seed + len(self.history), exclude=skip)
            hints = self.suggest(choice.rows, view)
            images = [{"path": self.paths[r], **h} for r, h in zip(choice.rows, hints)]
            if tab:
                self.handed[tab] = (now, {x["path"] for x in images})
            return {"images": images, "strategy": choice.strategy, "pool": pool, "version": self.version}

    # ---------------------------------------------------------------- progress

    def estimate(self, view: _View | None = None) -> tuple[float, float, float] | None:
        """Cross-validated accuracy (multi-label: mean average precision) of the model on the
        labelled images with its 95% interval (Wilson's; a bootstrap for mAP) as (value, low,
        high), None while a class has fewer than two of them."""
        from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

        view = view or self.view()
        lab = view.split != UNLABELLED
        Z, y = self.Z[lab], view.y[lab]
        if self.multi:
            from sklearn.metrics import average_precision_score
            keep = (y.sum(0) >= 2) & (y.sum(0) <= len(y) - 2)
            if len(y) < 4 or not keep.any():
                return None
            P = cross_val_predict(linear_probe(multi_label=True), Z, y[:, keep],
                                  cv=KFold(min(5, len(y)), shuffle=True, random_state=0), method="predict_proba")
            return (float(average_precision_score(y[:, keep], P, average="macro")),
                    *mean_ap_interval(y[:, keep], P))
        counts = np.bincount(y) if len(y) else np.zeros(0)
        counts = counts[counts > 0]
        if len(counts) < 2 or counts.min() < 2:
            return None
        cv = StratifiedKFold(int(min(5, counts.min())), shuffle=True, random_state=0)
        pred = cross_val_predict(linear_probe(), Z, y, cv=cv)
        right = int((pred == y).sum())
        return (right / len(y), *wilson(right, len(y)))

    def next_group(self, n: int | None = None, tab: str = "") -> dict:
        """Up to ``n`` (the batch's size) unlabelled look-alikes to label with one key
        (:func:`~pipeline.label.select_group`), the class the current model suggests for them,
        and each one's own suggestion."""
        with self.lock:
            self._sync()
            if self.multi:
                raise UserError("groups take one class each: a multi-label set is labelled one image at a time")
            view = self.view()
            now = time.monotonic()
            self.handed = {t: (when, paths) for t, (when, paths) in self.handed.items() if now - when < HANDED_FOR}
            elsewhere = set().union(*(paths for t, (_, paths) in self.handed.items() if t != tab))
            skip = {self.where[p] for p in set(self.skipped) | set(self.table.excluded) | elsewhere if p in self.where}
            if not len(set(np.flatnonzero(view.split == UNLABELLED).tolist()) - skip):
                return {"images": [], "suggested": None, "version": self.version}
            group = select_group(view, int(n or self.batch), self.seed + len(self.history), exclude=skip)
            hints = self.suggest(group.rows, view)
            images = [{"path": self.paths[r], **h} for r, h in zip(group.rows, hints)]
            if tab:
                self.handed[tab] = (now, {x["path"] for x in images})
            return {"images": images, "version": self.version,
                    "suggested": None if group.suggested is None else view.class_names[group.suggested]}

    def decide_group(self, paths: list[str], labels: list[str], tab: str = "") -> list[Decision]:
        """The same labels for every image of a group (each a decision of its own: journaled, and
        undone one by one or together)."""
        with self.lock:
            unknown = [p for p in paths if p not in self.where]
            if unknown:
                raise UserError(f"{unknown[0]}: not an image of this data set")
            return [self.decide(p, labels, tab=tab) for p in paths]

    def progress(self) -> dict:
        with self.lock:
            self._sync()
            view = self.view()
            lab = view.split != UNLABELLED
            counts = (view.y[lab].sum(0).tolist() if self.multi else
                      np.bincount(view.y[lab], minlength=len(view.class_names)).tolist() if lab.any()
                      else [0] * len(view.class_names))
            n = int(lab.sum())
            if not self.curve or self.curve[-1][0] != n:
                estimate = self.estimate(view)
                if estimate is not None:
                    self.curve.append((n, *estimate))  # (labels, value, 95% low, 95% high)
            return {"classes": view.class_names, "counts": counts, "labelled": n, "images": len(view.paths),
                    "excluded": len(self.table.excluded), "skipped": len(self.skipped),
                    "decisions": len(self.history), "curve": self.curve, "multi_label": self.multi,
                    "metric": "mean average precision" if self.multi else "accuracy",
                    "labels_file": str(self.labels_path), "codes": str(self.codes_path), "note": self.note}

    # ---------------------------------------------------------------- review

    def review(self) -> dict:
        """The audit's findings on the labelled images: likely label errors (given, suggested),
        copies across classes and across the split, outliers; those decided on left out. In a
        multi-label set each image's label set stands for its class, as in the audit (label
        errors by confident learning on the labels); every finding names its labels as a list."""
        from pipeline.quality import find, label_sets, set_name, suggested_classes, unit_rows

        with self.lock:
            view = self.view()
            lab = np.flatnonzero(view.split != UNLABELLED)
            if self.multi and len(lab):
                targets = np.asarray(view.y)[lab] > 0
                sets, y, labels = label_sets(targets, view.class_names)
            else:
                targets = sets = None
                y = np.asarray(view.y)[lab]
                labels = [[name] for name in view.class_names]
            if len(lab) < 3 or len(np.unique(y)) < 2:
                return {"issues": [], "pairs": [], "outliers": [],
                        "note": "the review needs at least 3 labelled images of 2 classes"
                                + (" (label sets)" if self.multi else "")}
            X = self.X[lab]
            reviewed = set(self.reviewed) | set(self.table.excluded)
            split = self.stored_split[lab]
        f = find(unit_rows(X), y, len(labels), progress=False, targets=targets, sets=sets)
        suggested = suggested_classes(f.proba, y)
        name = lambda k: set_name(labels[k])
        given = lambda i: {"given": name(y[i]), "given_labels": labels[y[i]]}
        issues = [{"path": self.paths[lab[i]], **given(i), "suggested": name(suggested[i]),
                   "suggested_labels": labels[suggested[i]], "p_given": round(float(f.proba[i, y[i]]), 3)}
                  for i in f.issues if self.paths[lab[i]] not in reviewed][:REVIEW_LIMIT]
        pairs = []
        for p in f.pairs:
            a, b = self.paths[lab[p.a]], self.paths[lab[p.b]]
            leak = UNLABELLED not in (split[p.a], split[p.b]) and split[p.a] != split[p.b]
            if (p.kind == "across classes" or leak) and not {a, b} & reviewed:
                pairs.append({"a": a, "b": b, "given_a": name(y[p.a]), "given_b": name(y[p.b]),
                              "labels_a": labels[y[p.a]], "labels_b": labels[y[p.b]],
                              "similarity": round(p.similarity, 4), "kind": p.kind, "tier": p.tier,
                              "across_split": bool(leak)})
        outliers = [{"path": self.paths[lab[i]], **given(i), "score": round(float(f.scores[i]), 4)}
                    for i in f.outliers if self.paths[lab[i]] not in reviewed][:REVIEW_LIMIT]
        return {"issues": issues, "pairs": pairs[:REVIEW_LIMIT], "outliers": outliers, "note": ""}

    # ---------------------------------------------------------------- the background refresh

    def refresh(self) -> bool:
        """Stage 1 again if decisions were made or images added or removed since the last time:
        the index takes the labels (no code computed) and new images get codes. True if it ran."""
        paths, _, _ = walk_images(self.root)
        with self.lock:
            if not self._dirty and set(paths) == set(self.paths):
                return False
            self._dirty = False  # a decision made while stage 1 runs sets it again
        try:
            cs = self.make_codes(self._layout())
        except UserError as exc:
            with self.lock:
                self.note = f"the code set waits: {exc}"
            return False
        self._load(cs)
        with self.lock:
            self.note = ""
        return True

    def run_refresher(self, every: float) -> threading.Thread:
        def loop():
            while not self._stop.wait(every):
                try:
                    self.refresh()
                except Exception as exc:  # keep serving; say why the codes did not follow
                    logger.warning(f"warning: background codes: {type(exc).__name__}: {exc}")
        t = threading.Thread(target=loop, name="codes-refresh", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()


def labels_file_of(cs, data: Path, given=None) -> Path:
    """Where the labelling app's decisions go for code set ``cs`` of folder ``data``: ``given``
    (--labels), else the labels file the folder's layout was read from, else DATA/labels.csv."""
    return labels_file_for(cs.attrs.get("layout"), data, given)
