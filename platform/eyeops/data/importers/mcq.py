"""Ophtimus-style text QA: MCQ (``question, option_a…option_e, answer, explanation``) and essay
(``question, answer``), from csv / xlsx / json / jsonl / parquet.

MCQ answers may be a letter in any common form (``B``, ``b``, ``(B)``, ``B.``) or the text of an
option; they are stored as the letter. ``option_e`` and ``explanation`` are optional.
"""

from __future__ import annotations

import re

from eyeops.data.importers._common import read_rows, require_columns, source_path, text, where
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task

__all__ = ["ESSAY_COLUMNS", "MCQ_COLUMNS", "load", "parse_answer"]

MCQ_COLUMNS = ("question", "option_a", "option_b", "option_c", "option_d", "answer")
ESSAY_COLUMNS = ("question", "answer")
LETTERS = "ABCDE"


def parse_answer(answer: str, options: list[str]) -> str | None:
    """The answer letter, or None when ``answer`` is neither a valid letter nor an option's text."""
    match = re.fullmatch(r"\(?([A-Ea-e])[).:]?(\s.*)?", answer.strip())
    if match and LETTERS.index(match.group(1).upper()) < len(options):
        return match.group(1).upper()
    for i, option in enumerate(options):
        if option.strip().lower() == answer.strip().lower():
            return LETTERS[i]
    return None


def load(path: str | None, *, kind: str = "mcq") -> ImportResult:
    """One record per valid row; rows with empty fields or an invalid answer are quarantined."""
    src = source_path(path, kind=kind)
    rows = list(read_rows(src))
    require_columns(src, rows[0][1] if rows else None, MCQ_COLUMNS if kind == "mcq" else ESSAY_COLUMNS)
    result = ImportResult()
    for row_no, row in rows:
        if not isinstance(row, dict):
            result.reject(where(src, row_no), f"expected an object, got {type(row).__name__}")
            continue
        question, answer = text(row.get("question")), text(row.get("answer"))
        empty = "question" if not question else "answer" if not answer else None
        if empty:
            result.reject(where(src, row_no, empty), "empty")
            continue
        meta = {k: text(row.get(k)) for k in ("explanation", "category", "subject") if text(row.get(k))}
        if kind == "essay":
            result.records.append(
                RawRecord(
                    key=f"{row_no:06d}",
                    task=Task.TEXT_QA,
                    where=where(src, row_no),
                    messages=(Message(role="user", content=question),),
                    answer=answer,
                    source="essay",
                    license=text(row.get("license")) or "unknown",
                    meta=meta,
                )
            )
            continue
        options = [text(row.get(f"option_{c}")) for c in "abcde"]
        while options and not options[-1]:
            options.pop()
        if len(options) < 2 or not all(options):
            missing = next(f"option_{c}" for c, o in zip("abcde", [*options, ""], strict=False) if not o)
            result.reject(where(src, row_no, missing), "empty option")
            continue
        letter = parse_answer(answer, options)
        if letter is None:
            result.reject(
                where(src, row_no, "answer"),
                f"{answer!r} is not a letter A–{LETTERS[len(options) - 1]} nor an option text",
            )
            continue
        lettered = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        result.records.append(
            RawRecord(
                key=f"{row_no:06d}",
                task=Task.MCQ,
                where=where(src, row_no),
                messages=(Message(role="user", content=f"{question}\n{lettered}\nAnswer with the letter."),),
                answer=letter,
                options=tuple(options),
                source="mcq",
                license=text(row.get("license")) or "unknown",
                meta=meta,
            )
        )
    return result
