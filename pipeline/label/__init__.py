"""Labelling: which unlabelled images are worth a person's time next (:func:`select_next`), and
the labelling app's session (:class:`LabelSession`; its web app: :func:`make_app`)."""

from pipeline.label._app import listen, make_app, serve, stored_token
from pipeline.label._select import GROUP_SIZE, STRATEGIES, Choice, Group, select_group, select_next
from pipeline.label._session import Decision, LabelSession, labels_file_of

__all__ = ["GROUP_SIZE", "STRATEGIES", "Choice", "Decision", "Group", "LabelSession", "labels_file_of", "listen", "make_app",
           "select_group", "select_next", "serve", "stored_token"]
