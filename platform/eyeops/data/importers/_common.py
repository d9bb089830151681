"""Shared reading and validation for importers: whole-file problems raise, row problems quarantine."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from eyeops.errors import DataError


def source_path(path: str | None, *, kind: str) -> Path:
    if not path:
        raise DataError(f"source {kind!r} needs a path", field="data.path")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("file not found", file=str(p))
    return p


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(row number as a person sees it, record)`` from csv / xlsx / json / jsonl / parquet.

    Row numbers are spreadsheet lines for tables (header = 1) and 1-based record indices for JSON.
    """
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        yield from _read_json(path)
        return
    import pandas as pd

    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        elif suffix in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataError(
                f"unsupported file type {suffix!r} (csv, xlsx, json, jsonl, parquet)", file=str(path)
            )
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(path)) from None
    except Exception as exc:  # pandas raises many parser types; present them as one clear line
        raise DataError(f"cannot read table: {exc}", file=str(path)) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for i, row in enumerate(frame.to_dict(orient="records")):
        yield i + 2, row


def _read_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(path)) from None
    if path.suffix.lower() == ".jsonl":
        items: Iterable[Any] = []
        parsed = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                parsed.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", file=str(path), row=line_no) from None
        items = parsed
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=str(path)
            ) from None
        if isinstance(data, dict):  # {"data": [...]} wrappers are common
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataError("expected a JSON array of records", file=str(path))
        items = list(enumerate(data, 1))
    yield from items


def require_columns(path: Path, first_row: dict[str, Any] | None, required: Iterable[str]) -> None:
    """Whole-file check: every required column is present (names the missing ones)."""
    if first_row is None:
        raise DataError("no records", file=str(path))
    missing = [c for c in required if c not in first_row]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {sorted(first_row)}", file=str(path), field=missing[0]
        )


def text(value: Any) -> str:
    """A cell as stripped text ('' for missing / NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def where(path: Path, row: int, field: str | None = None) -> str:
    """A PHI-free location for quarantine reports: ``data.csv row 7 field 'answer'``."""
    return f"{path.name} row {row}" + (f" field {field!r}" if field else "")
