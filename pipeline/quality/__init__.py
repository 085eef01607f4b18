"""Audit: near-duplicates, likely label errors and outliers of a data set, read from its codes."""

from pipeline.quality._audit import (
    CROSS_THRESHOLD,
    AuditSettings,
    THRESHOLD,
    Findings,
    audit,
    find,
    label_sets,
    set_name,
    suggested_classes,
    unit_rows,
)
from pipeline.quality._neighbours import EXACT_LIMIT, SEARCHES

__all__ = ["AuditSettings", "CROSS_THRESHOLD", "EXACT_LIMIT", "SEARCHES", "THRESHOLD", "Findings", "audit", "find", "label_sets", "set_name", "suggested_classes",
           "unit_rows"]
