"""Run folders, ``runs/<time>-<name>/``, and their ``record.json``: made and read here only, so
that every stage (runs, reports, exports, the audit) reads a record the same way."""
from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

from pipeline.errors import UserError, one_line

RECORD_VERSION = 1  # 0: records written before the version was recorded (same fields)
KINDS = ("head-on-codes", "finetune", "scratch")


def new_run_dir(runs_dir, name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(runs_dir) / f"{stamp}-{name}"
    i = 1
    while path.exists():
        i += 1
        path = Path(runs_dir) / f"{stamp}-{name}-{i}"
    path.mkdir(parents=True)
    return path


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
