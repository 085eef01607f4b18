"""Audit: near-duplicates, likely label errors and outliers of a data set, read from its codes."""

from pipeline.quality._audit import (
    CROSS_THRESHOLD,
    THRESHOLD,
    Findings,
    audit,
    find,
    label_sets,
    set_name,
    suggested_classes,
    unit_rows,
)

__all__ = ["CROSS_THRESHOLD", "THRESHOLD", "Findings", "audit", "find", "label_sets", "set_name", "suggested_classes",
           "unit_rows"]
