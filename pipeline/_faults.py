"""Named fault points: kill this process at a chosen step, to test that no crash wedges a cache.

``CNN_CODES_FAULT=<point>`` in the environment makes the process send itself SIGKILL the first
time it reaches ``<point>``; ``<point>:<k>`` the k-th time. ``CNN_CODES_FAULT_SIGNAL=INT`` sends
SIGINT instead (a Ctrl-C at that moment). Read here and nowhere else. The points of stage 1 are
listed in :data:`POINTS`, in the order a run reaches them; those of the commands that write run
folders and exports in :data:`RUN_POINTS`.
"""
from __future__ import annotations

import collections
import os
import signal

POINTS = (
    "locked",             # lock held, nothing planned or computed yet
    "part-tmp-written",   # a partition's part file written under its temporary name
    "part-saved",         # a partition's part file moved into place
    "all-staged",         # every partition's parts written, no index yet
    "index-tmp-written",  # the new index written under its temporary name, not yet moved
    "index-moved",        # the new index in place, parts it no longer needs not yet deleted
    "parts-cleaned",      # parts no index refers to deleted
    "output-done",        # one code set (layer, pooling) committed, the next not yet
    "compact-part-saved",  # a merged part written while compacting, the index not yet over it
)
RUN_POINTS = (
    "run-head-saved",     # a head run's head saved in its folder, the run not yet complete (train)
    "run-assembled",      # every file of a run written under its temporary name, not yet moved (train, sweep, audit)
    "export-tmp-written",  # an exported file written under its temporary name, not yet renamed (export)
    "labels-tmp-written",  # a labels file written under its temporary name, not yet renamed (label)
)
_seen: collections.Counter = collections.Counter()


def fault_point(name: str) -> None:
    """Die here (SIGKILL: no clean-up, as a power cut) if the environment asks for it."""
    want = os.environ.get("CNN_CODES_FAULT")
    if not want:
        return
    point, _, nth = want.partition(":")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("CNN_CODES_FAULT_SIGNAL", "KILL")))
