"""Shared pieces of the benchmark importers: filters, option columns, image lookup, the row loop.

A row maker returns a :class:`~eyeops.data.records.RawRecord`, a :class:`Filtered` reason (a
valid row the filter leaves out: counted, not quarantined) or ``(field, reason)`` (a bad row:
quarantined). Column names are matched case-insensitively (published copies differ in case).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from eyeops.data.importers._common import read_rows, text, where
from eyeops.data.importers.mcq import LETTERS, parse_answer
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Modality
from eyeops.errors import DataError

__all__ = [
    "OPHTHALMOLOGY_TERMS",
    "Filtered",
    "collect",
    "find_image",
    "keyword_filter",
    "lowered_rows",
    "mcq_prompt",
    "modality_of",
    "options_and_answer",
    "require",
    "subject_filter",
]

# What the filter term "ophthalmology" stands for in keyword filters (word prefixes).
OPHTHALMOLOGY_TERMS = (
    "ophthalm", "eye", "ocular", "retin", "macula", "glaucoma", "cataract", "cornea", "corneal",
    "uveitis", "conjunctiv", "keratitis", "keratoconus", "strabismus", "amblyopia", "myopia",
    "intraocular", "optic nerve", "optic neuritis", "vitreous", "visual acuity", "blindness",
)  # fmt: skip
_ANSWER_KEYS = ("answer", "gt_answer", "correct_answer", "answer_idx", "correct_option", "label")


class Filtered(str):
    """Why a valid row was left out by the filter (e.g. ``subject_name 'Anatomy'``)."""


Row = dict[str, Any]
Outcome = RawRecord | Filtered | tuple[str, str]


def lowered_rows(path: Path) -> list[tuple[int, Any]]:
    """``read_rows`` with every record's keys stripped and lower-cased."""
    return [
        (n, {str(k).strip().lower(): v for k, v in row.items()} if isinstance(row, dict) else row)
        for n, row in read_rows(path)
    ]


def require(path: Path, rows: list[tuple[int, Any]], columns: Iterable[str]) -> None:
    """Whole-file layout check on the first record: names the first missing column."""
    first = next((row for _, row in rows), None)
    if first is None:
        raise DataError("no records", file=str(path))
    if not isinstance(first, dict):
        raise DataError(
            f"expected records as objects, got {type(first).__name__}", file=str(path), row=rows[0][0]
        )
    missing = [c for c in columns if c not in first]
    if missing:
        raise DataError(
            f"missing column(s) {missing} (matched case-insensitively); found {sorted(first)}",
            file=str(path),
            field=missing[0],
        )


def collect(
    path: Path,
    rows: Iterable[tuple[int, Any]],
    make: Callable[[int, Row], Outcome],
    into: ImportResult | None = None,
) -> ImportResult:
    """Run ``make`` over every row, sorting the outcomes into records, filtered and quarantined."""
    result = into if into is not None else ImportResult()
    for row_no, row in rows:
        out: Outcome = (
            make(row_no, row)
            if isinstance(row, dict)
            else ("<record>", f"expected an object, got {type(row).__name__}")
        )
        if isinstance(out, RawRecord):
            result.records.append(out)
        elif isinstance(out, Filtered):
            result.skip(str(out))
        else:
            result.reject(where(path, row_no, out[0]), out[1])
    return result


def keyword_filter(terms: Sequence[str] | None) -> Callable[..., bool] | None:
    """None (keep all) without terms; else true when any text mentions a term (word prefix, any case).

    The term ``ophthalmology`` stands for :data:`OPHTHALMOLOGY_TERMS`.
    """
    words = [
        w
        for t in terms or ()
        for w in (OPHTHALMOLOGY_TERMS if t.strip().lower() == "ophthalmology" else (t.strip(),))
        if w
    ]
    if not words:
        return None
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in words) + ")", re.IGNORECASE)
    return lambda *texts: any(pattern.search(t) for t in texts if t)


def subject_filter(terms: Sequence[str] | None) -> Callable[[str], bool] | None:
    """None (keep all) without terms; else true when a category value equals a term (any case)."""
    wanted = {t.strip().lower() for t in terms or () if t.strip()}
    return (lambda value: value.strip().lower() in wanted) if wanted else None


def options_and_answer(row: Row) -> tuple[list[str], str] | tuple[str, str]:
    """``(options, answer letter)`` from any common MCQ layout, or ``(field, reason)``.

    Options: ``option_a…option_e``, ``a…e`` columns, or ``options``/``choices`` as a list, a
    ``{"A": …}`` object or ``"A. …\\nB. …"`` text. Answer: a letter in any common form or the text
    of an option, under ``answer`` / ``gt_answer`` / ``correct_answer`` / ``answer_idx`` / ….
    """
    letters = LETTERS.lower()
    for names in ([f"option_{c}" for c in letters], list(letters)):
        if names[0] in row:
            options = [text(row.get(n)) for n in names]
            field = names
            break
    else:
        raw = row.get("options", row.get("choices"))
        field = ["options"] * len(LETTERS)
        if isinstance(raw, dict):
            options = [text(raw.get(c, raw.get(c.lower()))) for c in LETTERS]
        elif isinstance(raw, list):
            options = [text(o) for o in raw]
        elif isinstance(raw, str) and raw.strip():
            parts = re.split(r"(?:^|\n)\s*\(?[A-Ea-e][).:]\s*", raw.strip())
            options = [p.strip() for p in parts if p.strip()]
        else:
            return "options", "no option columns (option_a…, a…, options or choices)"
    while options and not options[-1]:
        options.pop()
    if len(options) < 2 or not all(options):
        i = next((i for i, o in enumerate(options) if not o), len(options))
        return field[min(i, len(field) - 1)], "empty option" if i < len(options) else "fewer than 2 options"
    key = next((k for k in _ANSWER_KEYS if text(row.get(k))), None)
    if key is None:
        return "answer", "missing or empty"
    letter = parse_answer(text(row[key]), options)
    if letter is None:
        return key, f"{text(row[key])!r} is not a letter A–{LETTERS[len(options) - 1]} nor an option text"
    return options, letter


def mcq_prompt(question: str, options: Sequence[str], *, context: str = "", image_token: str = "") -> str:
    lettered = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    head = f"{image_token}\n" if image_token else ""
    ctx = f"Context: {context}\n" if context else ""
    return f"{head}{ctx}{question}\n{lettered}\nAnswer with the letter."


def find_image(base: Path, name: str, folders: Sequence[str] = ("images", "imgs")) -> str:
    """The image's path under ``base`` or one of the benchmark's usual image folders."""
    for folder in ("", *folders):
        candidate = base / folder / name
        if candidate.is_file():
            return str(candidate)
    return str(base / name)  # missing: quarantined by the image stage with this path


_MODALITIES = (  # (pattern, modality) in order: OCT before CT
    (r"fundus|retinograph", Modality.FUNDUS),
    (r"\boct\b|optical coherence", Modality.OCT),
    (r"\bct\b|computed tomography", Modality.CT),
    (r"\bmri?\b|magnetic resonance", Modality.MRI),
    (r"x-?ray|radiograph", Modality.XRAY),
    (r"slit", Modality.SLIT_LAMP),
)


def modality_of(name: str) -> Modality:
    """Our modality for a benchmark's modality name (``other`` when it is none of ours)."""
    low = name.lower()
    return next((m for pattern, m in _MODALITIES if re.search(pattern, low)), Modality.OTHER)
