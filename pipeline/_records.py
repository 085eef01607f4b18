"""Run folders, ``runs/<time>-<name>/``, and their ``record.json``: made and read here only, so
that every stage (runs, reports, exports, the audit) reads a record the same way.

A run folder appears whole or not at all: it is assembled under a hidden name,
``runs/.partial-<time>-<name>.<pid>/`` (which no "newest run" choice and no ``runs/*`` glob
sees), and renamed to its own name once complete. A partial folder whose process is gone (a
killed run) is deleted by the next run made in the same ``runs`` folder."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
from pathlib import Path

from pipeline._faults import fault_point
from pipeline.errors import UserError, one_line

RECORD_VERSION = 1  # 0: records written before the version was recorded (same fields)
KINDS = ("head-on-codes", "finetune", "scratch")


PARTIAL = ".partial-"


def _free_name(runs_dir: Path, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = runs_dir / f"{stamp}-{name}"
    i = 1
    while path.exists():
        i += 1
        path = runs_dir / f"{stamp}-{name}-{i}"
    return path


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partial_runs(runs_dir) -> None:
    """Delete the partial run folders of processes that are gone."""
    for p in Path(runs_dir).glob(PARTIAL + "*"):
        pid = p.name.rsplit(".", 1)[-1]
        if p.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


class RunFolder:
    """A run folder being assembled: ``path`` is where its files go (the hidden partial folder
    until :meth:`commit`, then the run's own), ``name`` its final name."""

    def __init__(self, runs_dir, name: str):
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        clean_partial_runs(runs_dir)
        self.final = _free_name(runs_dir, name)
        self.name = self.final.name
        self.path = runs_dir / f"{PARTIAL}{self.name}.{os.getpid()}"
        self.path.mkdir()

    def commit(self) -> Path:
        """Move the complete run into place (its name taken meanwhile: the next free one)."""
        fault_point("run-assembled")
        if self.final.exists():
            self.final = _free_name(self.final.parent, self.name.split("-", 2)[-1])
        os.rename(self.path, self.final)
        fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.path = self.final
        return self.final

    def abandon(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def assembled_run(runs_dir, name: str):
    """``with assembled_run(runs, name) as run:`` write into ``run.path``; on leaving the block the
    run is moved into place whole (``run.path`` is then its folder); on an error it is deleted."""
    run = RunFolder(runs_dir, name)
    try:
        yield run
    except BaseException:
        run.abandon()
        raise
    run.commit()


def run_name(run_dir) -> str:
    """The name a run folder has (or will have, while it is assembled)."""
    name = Path(run_dir).name
    return name[len(PARTIAL):].rsplit(".", 1)[0] if name.startswith(PARTIAL) else name


def load_record(run_dir, kind: str | None = None) -> dict:
    """The record of a run folder (of ``kind``, if given); one clear error for anything else."""
    path = Path(run_dir) / "record.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no record.json)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable run record ({one_line(exc)})") from None
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise UserError(f"{path} is not a run record of this project")
    if record.get("record_version", 0) > RECORD_VERSION:
        raise UserError(f"{path} was written by a newer version (record version {record['record_version']})")
    if kind and record["kind"] != kind:
        raise UserError(f"{run_dir} is a {record['kind']} run, not a {kind} run")
    return record


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run: its folder, its kind and what it measured.

    ``kind`` is one of :data:`KINDS` (a run folder with ``record.json``), ``"sweep"`` (its
    ``metrics`` are the sweep's summary rows) or ``"audit"`` (its ``metrics`` the audit's
    summary). Head, fine-tuned and from-scratch runs' ``metrics`` hold at least ``accuracy`` and
    ``mean_per_class_accuracy``.
    """

    path: Path
    kind: str
    metrics: dict

    @classmethod
    def load(cls, run_dir) -> "Run":
        """The run of a head, fine-tuned or from-scratch run folder (its record checked)."""
        record = load_record(run_dir)
        return cls(Path(run_dir), record["kind"], dict(record.get("metrics") or {}))

    def __fspath__(self) -> str:  # a Run goes wherever a run folder's path does
        return str(self.path)

    @property
    def record(self) -> dict:
        """The run's ``record.json`` (read anew)."""
        return load_record(self.path)
