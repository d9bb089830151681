"""Medical Meadow essays (Medical Flashcards, Medical Wikidoc, Wikidoc patient information) as
published: alpaca-style ``instruction, input, output`` rows (json / jsonl / csv / parquet).

The prompt is the instruction followed by the input (the flashcards put a fixed instruction and
the question in ``input``); ``output`` is the reference essay. A filter keeps rows whose prompt
mentions a term (``ophthalmology`` stands for the eye terms).
"""

from __future__ import annotations

from eyeops.data.importers._benchmark import Filtered, collect, keyword_filter, lowered_rows, require
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task

__all__ = ["COLUMNS", "load"]

COLUMNS = ("instruction", "input", "output")


def load(path: str | None, *, kind: str = "flashcards", filter: list[str] | None = None) -> ImportResult:
    src = source_path(path, kind=kind)
    rows = lowered_rows(src)
    require(src, rows, COLUMNS)
    keep = keyword_filter(filter)

    def make(row_no: int, row: dict) -> RawRecord | Filtered | tuple[str, str]:
        prompt = "\n".join(p for p in (text(row.get("instruction")), text(row.get("input"))) if p)
        if keep and not keep(text(row.get("input")) or prompt):
            return Filtered("no filter term in input")
        if not text(row.get("input")) and not text(row.get("instruction")):
            return "input", "empty (and no instruction)"
        if not text(row.get("output")):
            return "output", "empty"
        return RawRecord(
            key=f"{row_no:06d}",
            task=Task.TEXT_QA,
            where=where(src, row_no),
            messages=(Message(role="user", content=prompt),),
            answer=text(row.get("output")),
            source=kind,
            license="unknown",
        )

    return collect(src, rows, make)
