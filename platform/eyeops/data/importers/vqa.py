"""Radiology VQA benchmarks as published, one image per question (JSON arrays).

- VQA-RAD (``VQA_RAD Dataset Public.json``): ``image_name, question, answer, answer_type
  (CLOSED|OPEN), question_type, image_organ``; images in ``VQA_RAD Image Folder/`` or ``images/``.
- SLAKE (``train.json`` / ``test.json``): ``img_name, question, answer, answer_type, modality,
  location, q_lang``; images under ``imgs/``. Only ``q_lang == "en"`` is kept (the rest is
  counted as filtered).

CLOSED answers become ``closed_qa``, OPEN ones ``open_qa``. A filter keeps questions whose organ /
location / modality mentions a term.
"""

from __future__ import annotations

from pathlib import Path

from eyeops.data.importers._benchmark import (
    Filtered,
    collect,
    find_image,
    keyword_filter,
    lowered_rows,
    modality_of,
    require,
)
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.records import ImageInput, ImportResult, RawRecord
from eyeops.data.schema import IMAGE_TOKEN, Message, Modality, Task

__all__ = ["LAYOUTS", "load"]

# source -> (image column, required columns, image folders, metadata columns)
LAYOUTS = {
    "vqa_rad": (
        "image_name",
        ("image_name", "question", "answer", "answer_type"),
        ("VQA_RAD Image Folder", "images"),
        ("qid", "question_type", "image_organ", "phrase_type"),
    ),
    "slake": (
        "img_name",
        ("img_name", "question", "answer", "answer_type", "q_lang"),
        ("imgs", "images"),
        ("qid", "content_type", "location", "modality", "img_id"),
    ),
}
_TASKS = {"closed": Task.CLOSED_QA, "open": Task.OPEN_QA}


def load(
    path: str | None, *, kind: str = "vqa_rad", filter: list[str] | None = None, image_dir: str | None = None
) -> ImportResult:
    src = source_path(path, kind=kind)
    image_col, required, folders, meta_cols = LAYOUTS[kind]
    base = Path(image_dir) if image_dir else src.parent
    rows = lowered_rows(src)
    require(src, rows, required)
    keep = keyword_filter(filter)

    def make(row_no: int, row: dict) -> RawRecord | Filtered | tuple[str, str]:
        lang = text(row.get("q_lang")).lower()
        if kind == "slake" and lang != "en":
            return Filtered(f"q_lang {lang or '<empty>'!r}")
        organ, modality = text(row.get("image_organ") or row.get("location")), text(row.get("modality"))
        if keep and not keep(organ, modality):
            return Filtered("no filter term in organ/location/modality")
        answer_type = text(row.get("answer_type")).lower()
        if answer_type not in _TASKS:
            return "answer_type", f"{text(row.get('answer_type')) or '<empty>'!r} is not CLOSED or OPEN"
        for name in (image_col, "question", "answer"):
            if not text(row.get(name)):
                return name, "empty"
        meta = {c: text(row.get(c)) for c in meta_cols if text(row.get(c))}
        return RawRecord(
            key=f"{row_no:06d}",
            task=_TASKS[answer_type],
            where=where(src, row_no),
            images=(
                ImageInput(
                    ref=where(src, row_no, image_col), path=find_image(base, text(row[image_col]), folders)
                ),
            ),
            modality=modality_of(modality) if modality else Modality.OTHER,
            messages=(Message(role="user", content=f"{IMAGE_TOKEN}\n{text(row['question'])}"),),
            answer=text(row["answer"]),
            source=kind,
            license="unknown",
            group=text(row[image_col]),  # questions on one image stay in one split
            meta=meta,
        )

    return collect(src, rows, make)
