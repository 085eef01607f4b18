"""Files read back (run records, head descriptions, model metadata, predictions, sweep summaries,
cache folder notes) are checked against a schema when they are read: types, required fields,
ranges, finite values, size and nesting. A file someone hands us, or one damaged on disk, is one
``error:`` line naming the file and the field, never a traceback further on.

The schemas are pydantic models, each beside the reader of its file; this module holds what
they share: reading with a size limit, the common field types, and the one-line message.
Fields a schema does not name are kept (newer versions may add some) but must stay within the
nesting limit of the JSON parser (pydantic's, 200 levels)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import UserError

MAX_COUNT = 10**12  # images, rows, epochs: far beyond any real set, far below what breaks arithmetic

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0, le=1e9)]
Name = Annotated[str, Field(min_length=1, max_length=4096)]  # a class name, a relative path
Text = Annotated[str, Field(max_length=1 << 20)]


class Schema(BaseModel):
    """Strict types (a number in quotes is not a number), finite floats, unknown fields kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)


class LaxSchema(Schema):
    """For values stored as text by design (HDF5 attributes copied into records as strings)."""

    model_config = ConfigDict(strict=False, extra="allow", allow_inf_nan=False, frozen=True)


def unique(values: list) -> list:
    if len(set(values)) != len(values):
        seen = set()
        dup = next(v for v in values if v in seen or seen.add(v))
        raise ValueError(f"{dup!r} is listed twice")
    return values


def no_line_breaks(value: str) -> str:
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("holds a line break or a NUL character")
    return value


ClassName = Annotated[Name, AfterValidator(no_line_breaks)]
ClassNames = Annotated[list[ClassName], Field(min_length=1, max_length=10**7), AfterValidator(unique)]


def problem(exc: ValidationError) -> str:
    """The first problem of a validation error in a few words: the field, what is wrong, what it got."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "the whole file"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else repr(got)
    shown = f" (got {shown[:60] + '...' if len(shown) > 60 else shown})" if shown else ""
    more = f"; {len(errors) - 1} more problem(s)" if len(errors) > 1 else ""
    return f"{where}: {first['msg'].rstrip('.')}{shown}{more}"


def read_checked(path, schema: type[BaseModel], what: str, max_bytes: int = 256 << 20) -> Any:
    """The file at ``path`` (JSON) checked against ``schema``; a :class:`UserError` naming the
    file and the field for anything off. Returns the validated model."""
    path = Path(path)
    if not path.is_file():  # a pipe or a device would block the read or never end it
        raise UserError(f"{path} is not a {what}: not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{path} is not a {what}: {size:,} bytes, more than the {max_bytes:,} one may hold")
        text = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} ({exc.strerror})") from None
    return check_json(text, schema, f"{path} is not a valid {what}")


def check_json(text: bytes | str, schema: type[BaseModel], where: str) -> Any:
    try:
        return schema.model_validate_json(text)
    except ValidationError as exc:
        raise UserError(f"{where}: {problem(exc)}") from None


def check_value(value, schema, where: str) -> Any:
    """``value`` (already in memory: HDF5 attributes, a CSV row) checked against ``schema``."""
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise UserError(f"{where}: {problem(exc)}") from None
