"""MedMCQA as published: ``id, question, opa, opb, opc, opd, cop, choice_type, exp, subject_name,
topic_name`` (csv / json / jsonl / parquet).

``cop`` is 1–4 in the authors' GitHub JSON release and 0–3 in the Hugging Face release (a
ClassLabel a…d; its test split carries -1, no answer key). The base is read from the file: a 0
means 0-based, a 4 means 1-based; with neither, parquet (the HF release) and csv (its usual
exports) are taken as 0-based and json/jsonl (the GitHub release) as 1-based. The choice is
recorded in the manifest's ``import_notes``. Letters a–d are accepted too. By default only
``subject_name == "Ophthalmology"`` is kept (the Ophtimus subset).
"""

from __future__ import annotations

from pathlib import Path

from eyeops.data.importers._benchmark import (
    Filtered,
    collect,
    lowered_rows,
    mcq_prompt,
    require,
    subject_filter,
)
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.importers.mcq import LETTERS
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task
from eyeops.errors import DataError

__all__ = ["COLUMNS", "DEFAULT_FILTER", "load"]

COLUMNS = ("question", "opa", "opb", "opc", "opd", "cop")
OPTION_COLUMNS = ("opa", "opb", "opc", "opd")
DEFAULT_FILTER = ["Ophthalmology"]


def _cop_base(src: Path, rows: list[tuple[int, object]]) -> tuple[int, str]:
    seen = {text(r.get("cop")) for _, r in rows if isinstance(r, dict)}
    if "0" in seen and "4" in seen:
        raise DataError("cop holds both 0 and 4: neither 0-based nor 1-based", file=str(src), field="cop")
    if "0" in seen:
        return 0, "0-based (a 0 was seen: Hugging Face release)"
    if "4" in seen:
        return 1, "1-based (a 4 was seen: GitHub release)"
    base = 1 if src.suffix.lower() in (".json", ".jsonl") else 0
    return base, f"{base}-based (assumed from {src.suffix}: no 0 or 4 seen)"


def _letter(cop: str, base: int) -> str | None:
    if len(cop) == 1 and cop.upper() in LETTERS[:4]:
        return cop.upper()
    try:
        index = int(float(cop)) - base
    except ValueError:
        return None
    return LETTERS[index] if 0 <= index < 4 else None


def load(path: str | None, *, kind: str = "medmcqa", filter: list[str] | None = None) -> ImportResult:
    """MCQ records of the subjects in ``filter`` (default Ophthalmology; ``[]``: every subject)."""
    src = source_path(path, kind=kind)
    rows = lowered_rows(src)
    keep = subject_filter(DEFAULT_FILTER if filter is None else filter)
    require(src, rows, COLUMNS + (("subject_name",) if keep else ()))
    base, note = _cop_base(src, rows)

    def make(row_no: int, row: dict) -> RawRecord | Filtered | tuple[str, str]:
        subject = text(row.get("subject_name"))
        if keep and not keep(subject):
            return Filtered(f"subject_name {subject or '<empty>'!r}")
        question = text(row.get("question"))
        if not question:
            return "question", "empty"
        options = [text(row.get(c)) for c in OPTION_COLUMNS]
        empty = next((c for c, o in zip(OPTION_COLUMNS, options, strict=True) if not o), None)
        if empty:
            return empty, "empty option"
        cop = text(row.get("cop"))
        if cop in ("-1", ""):
            return "cop", f"no answer key (cop {cop or 'empty'}; MedMCQA's test split is unlabelled)"
        letter = _letter(cop, base)
        if letter is None:
            return "cop", f"{cop!r} is not an option index ({base}–{base + 3}) nor a letter a–d"
        meta = {
            k: text(row.get(k))
            for k in ("id", "subject_name", "topic_name", "choice_type")
            if text(row.get(k))
        }
        if text(row.get("exp")):
            meta["explanation"] = text(row.get("exp"))
        return RawRecord(
            key=f"{row_no:06d}",
            task=Task.MCQ,
            where=where(src, row_no),
            messages=(Message(role="user", content=mcq_prompt(question, options)),),
            answer=letter,
            options=tuple(options),
            source=kind,
            license=text(row.get("license")) or "unknown",
            meta=meta,
        )

    result = collect(src, rows, make)
    result.notes["cop"] = note
    return result
