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
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from pipeline._checked import ClassNames, Count, Fraction, Name, Schema, Seconds, Text, problem, read_checked
from pipeline._faults import fault_point
from pipeline._files import fit_name
from pipeline.errors import UserError

RECORD_VERSION = 1  # 0: records written before the version was recorded (same fields)
KINDS = ("head-on-codes", "finetune", "scratch")


PARTIAL = ".partial-"
NAME_ROOM = 160  # bytes of a run's name: with its time, a -N and the partial folder's, within 255


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
        # (a name made of a code set's attributes, which a file handed to us may make of any length)
        self.final = _free_name(runs_dir, fit_name(name, NAME_ROOM))
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
        run.commit()  # (inside: a Ctrl-C at the last moment leaves no partial folder either)
    except BaseException:
        if run.path != run.final:  # not moved into place yet
            run.abandon()
        raise


def run_name(run_dir) -> str:
    """The name a run folder has (or will have, while it is assembled)."""
    name = Path(run_dir).name
    return name[len(PARTIAL):].rsplit(".", 1)[0] if name.startswith(PARTIAL) else name


AnyFloat = Annotated[float, Field(allow_inf_nan=True)]  # a diverged loss is NaN: what happened


Interval = Annotated[list[Fraction], Field(min_length=2, max_length=2)]


class RunMetrics(Schema):
    """What every run measured on its test images (more fields are kept as they are)."""

    n: Count
    accuracy: Fraction
    mean_per_class_accuracy: Fraction
    top5_accuracy: Fraction | None = None
    positive_class: Text | None = None
    # 95% intervals [low, high] (reports._intervals; runs made before them have none)
    accuracy_ci: Interval | None = None
    mean_per_class_accuracy_ci: Interval | None = None
    top5_accuracy_ci: Interval | None = None
    mAP_ci: Interval | None = None
    micro_f1_ci: Interval | None = None
    macro_f1_ci: Interval | None = None


class RunRecord(Schema):
    """``record.json``: what a run was and what it measured. Fields beyond these are kept."""

    record_version: Annotated[int, Field(ge=0)] = 0
    kind: Literal[KINDS]
    title: Text = ""
    class_names: ClassNames
    metrics: RunMetrics
    confusion: list[list[Count]] | None = None
    codes: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    code_attrs: dict[Name, Text] = {}
    head: Name | None = None
    head_params: dict[Name, Any] = {}
    n_train: Count = 0
    n_val: Count = 0
    n_test: Count = 0
    test_paths: list[Annotated[str, Field(max_length=4096)]] = []
    train_seconds: Seconds | None = None
    split_digest: Text | None = None
    data_root: Text | None = None
    history: dict[Name, list[AnyFloat | None] | dict[Name, AnyFloat | None]] = {}
    task: Literal["single-label", "multi-label"] = "single-label"
    thresholds: list[Fraction] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        k = len(self.class_names)
        if self.task == "single-label" and self.confusion is None:
            raise ValueError("a single-label run needs its confusion matrix")
        if self.confusion is not None and (len(self.confusion) != k or any(len(r) != k for r in self.confusion)):
            raise ValueError(f"confusion is not {k} x {k}, one row and column per class")
        if self.task == "multi-label" and (self.thresholds is None or len(self.thresholds) != k):
            raise ValueError(f"a multi-label run needs thresholds, one per label ({k})")
        if self.kind == "head-on-codes" and (self.codes is None or self.head is None
                                             or "code_attrs" not in self.model_fields_set):
            raise ValueError("a head run names its codes, their attributes and its head")
        if len(self.test_paths) > self.n_test:
            raise ValueError(f"test_paths lists {len(self.test_paths)} images, n_test says {self.n_test}")
        return self


def write_record(run_dir, record: dict) -> None:
    """Write a run's ``record.json``, checked against :class:`RunRecord` as it will be read back:
    a record that its own readers would refuse is a bug of the writer, found here (a ValueError
    naming the field), never by a user's next command."""
    text = json.dumps({"record_version": RECORD_VERSION, **record}, indent=2)
    try:
        RunRecord.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"a run record that would not read back: {problem(exc)}") from None
    (Path(run_dir) / "record.json").write_text(text)


def load_record(run_dir, kind: str | None = None) -> dict:
    """The record of a run folder (of ``kind``, if given), checked against :class:`RunRecord`;
    one clear error line naming the file and the field for anything else."""
    path = Path(run_dir) / "record.json"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run folder (no record.json)")
    version = _stated_version(path)
    if version is not None and version > RECORD_VERSION:
        raise UserError(f"{path} was written by a newer version (record version {version})")
    read_checked(path, RunRecord, "run record")  # checked, then read as plain JSON: one copy in memory at a time
    record = json.loads(path.read_bytes())
    if kind and record["kind"] != kind:
        raise UserError(f"{run_dir} is a {record['kind']} run, not a {kind} run")
    return record


def _stated_version(path: Path) -> int | None:
    """The record version a file states, if it states a whole number (to say "newer version"
    rather than list what a newer record holds that this one does not know)."""
    try:
        value = (json.loads(path.read_bytes()).get("record_version")
                 if path.is_file() and path.stat().st_size < 1 << 20 else None)
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


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
