"""MedQuAD as published, as essays (``text_qa``): either its XML (one ``<Document>`` per file,
``<Focus>`` and ``<QAPairs><QAPair><Question qtype=…>…</Question><Answer>…</Answer>``; ``path``
is one file or a folder searched recursively) or a table with ``Question``/``Answer`` columns
(any case) and optional ``focus_area``, ``source``, ``qtype``.

A filter keeps pairs whose focus or question mentions a term (``ophthalmology`` stands for the
eye terms). Pairs with an empty answer (MedQuAD removed the MedlinePlus answers) are rejected.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import groupby
from pathlib import Path

from eyeops.data.importers._benchmark import Filtered, collect, keyword_filter, lowered_rows, require
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task
from eyeops.errors import DataError

__all__ = ["COLUMNS", "load"]

COLUMNS = ("question", "answer")


def _xml_rows(src: Path) -> list[tuple[Path, int, dict[str, str]]]:
    files = sorted(src.rglob("*.xml")) if src.is_dir() else [src]
    if not files:
        raise DataError("no .xml files in the folder", file=str(src))
    out = []
    for file in files:
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as exc:
            raise DataError(f"invalid XML: {exc}", file=str(file)) from None
        if root.tag != "Document":
            raise DataError(f"expected a <Document> root, got <{root.tag}>", file=str(file), field="Document")
        pairs = root.findall("./QAPairs/QAPair")
        if not pairs:
            raise DataError("no <QAPairs><QAPair> elements", file=str(file), field="QAPairs")
        common = {"focus_area": text(root.findtext("Focus")), "source": text(root.get("source"))}
        for i, pair in enumerate(pairs, 1):
            question = pair.find("Question")
            row = {
                **common,
                "question": text("".join(question.itertext())) if question is not None else "",
                "qtype": text(question.get("qtype")) if question is not None else "",
                "answer": text("".join(pair.find("Answer").itertext()))
                if pair.find("Answer") is not None
                else "",
            }
            out.append((file, i, row))
    return out


def _key(src: Path, file: Path, row_no: int) -> str:
    if file == src:
        return f"{row_no:06d}"
    return f"{file.relative_to(src).with_suffix('').as_posix().replace('/', '_')}-{row_no:04d}"


def load(path: str | None, *, kind: str = "medquad", filter: list[str] | None = None) -> ImportResult:
    src = source_path(path, kind=kind)
    keep = keyword_filter(filter)
    if src.is_dir() or src.suffix.lower() == ".xml":
        entries = _xml_rows(src)
    else:
        rows = lowered_rows(src)
        require(src, rows, COLUMNS)
        entries = [(src, n, row) for n, row in rows]

    def make(file: Path, row_no: int, row: dict) -> RawRecord | Filtered | tuple[str, str]:
        focus, question = text(row.get("focus_area") or row.get("focus")), text(row.get("question"))
        if keep and not keep(focus, question):
            return Filtered("no filter term in focus_area or question")
        answer = text(row.get("answer"))
        if not question or not answer:
            return ("question" if not question else "answer"), "empty"
        meta = {"focus_area": focus, "qtype": text(row.get("qtype")), "source_name": text(row.get("source"))}
        return RawRecord(
            key=_key(src, file, row_no),
            task=Task.TEXT_QA,
            where=where(file, row_no),
            messages=(Message(role="user", content=question),),
            answer=answer,
            source=kind,
            license="unknown",
            meta={k: v for k, v in meta.items() if v},
        )

    result = ImportResult()
    for file, group in groupby(entries, key=lambda e: e[0]):  # rejects name the file they are in
        collect(file, [(n, r) for _, n, r in group], lambda n, r, f=file: make(f, n, r), into=result)
    return result
