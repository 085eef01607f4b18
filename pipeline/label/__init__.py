"""Labelling: which unlabelled images are worth a person's time next (:func:`select_next`), and
the labelling app's session (:class:`LabelSession`; its web app: :func:`make_app`)."""

from pipeline.label._app import make_app
from pipeline.label._select import STRATEGIES, Choice, select_next
from pipeline.label._session import Decision, LabelSession, labels_file_of

__all__ = ["STRATEGIES", "Choice", "Decision", "LabelSession", "labels_file_of", "make_app", "select_next"]
