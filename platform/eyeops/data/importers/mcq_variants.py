"""Benchmark MCQ layouts beyond ``mcq``: Ophtimus-Eval-style text MCQ and OmniMedVQA-style MCQ
with an image.

- ``ophtimus_eval``: ``question`` with options as ``option_a…``/``option_A…``, ``A…E`` columns or an
  ``options``/``choices`` list, object or ``"A. …\\nB. …"`` text; the answer (a letter in any
  common form or an option's text) under ``answer``/``correct_answer``/``answer_idx``/…; optional
  ``explanation``, ``category``/``subject``/``topic`` (what a filter matches).
- ``omnimedvqa``: ``question, option_A…option_D, gt_answer`` (an option's text), ``image_path``
  (resolved against the file's folder), ``modality_type``, ``question_type``, ``dataset``; a
  filter matches modality, dataset and question type.
"""

from __future__ import annotations

from pathlib import Path

from eyeops.data.importers._benchmark import (
    Filtered,
    collect,
    find_image,
    keyword_filter,
    lowered_rows,
    mcq_prompt,
    modality_of,
    options_and_answer,
    require,
)
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.records import ImageInput, ImportResult, RawRecord
from eyeops.data.schema import IMAGE_TOKEN, Message, Modality, Task

__all__ = ["FILTER_FIELDS", "load"]

FILTER_FIELDS = {
    "ophtimus_eval": ("category", "subject", "topic", "subject_name"),
    "omnimedvqa": ("modality_type", "dataset", "question_type"),
}
_META = ("explanation", "question_id", "question_type", "modality_type", "dataset")


def load(
    path: str | None,
    *,
    kind: str = "ophtimus_eval",
    filter: list[str] | None = None,
    image_dir: str | None = None,
) -> ImportResult:
    src = source_path(path, kind=kind)
    base = Path(image_dir) if image_dir else src.parent
    rows = lowered_rows(src)
    with_image = kind == "omnimedvqa"
    require(src, rows, ("question", "image_path") if with_image else ("question",))
    keep = keyword_filter(filter)

    def make(row_no: int, row: dict) -> RawRecord | Filtered | tuple[str, str]:
        if keep and not keep(*(text(row.get(c)) for c in FILTER_FIELDS[kind])):
            return Filtered(f"no filter term in {'/'.join(FILTER_FIELDS[kind])}")
        question = text(row.get("question"))
        if not question:
            return "question", "empty"
        got = options_and_answer(row)
        if isinstance(got[0], str):
            return got  # (field, reason)
        options, letter = got
        images: tuple[ImageInput, ...] = ()
        if with_image:
            if not text(row.get("image_path")):
                return "image_path", "empty"
            images = (
                ImageInput(
                    ref=where(src, row_no, "image_path"), path=find_image(base, text(row["image_path"]))
                ),
            )
        meta = {c: text(row.get(c)) for c in (*_META, *FILTER_FIELDS[kind]) if text(row.get(c))}
        return RawRecord(
            key=f"{row_no:06d}",
            task=Task.MCQ,
            where=where(src, row_no),
            images=images,
            modality=modality_of(text(row.get("modality_type"))) if with_image else Modality.NONE,
            messages=(
                Message(
                    role="user",
                    content=mcq_prompt(question, options, image_token=IMAGE_TOKEN if images else ""),
                ),
            ),
            answer=letter,
            options=tuple(options),
            source=kind,
            license=text(row.get("license")) or "unknown",
            meta=meta,
        )

    return collect(src, rows, make)
