"""Labelling: which unlabelled images are worth a person's time next (:func:`select_next`)."""

from pipeline.label._select import STRATEGIES, Choice, select_next

__all__ = ["STRATEGIES", "Choice", "select_next"]
