"""PubMedQA as published (``ori_pqal.json`` and the artificial/unlabelled sets): one JSON object
keyed by PMID, ``{pmid: {QUESTION, CONTEXTS: [...], LABELS, MESHES, final_decision, LONG_ANSWER}}``.

Each item becomes a 3-option MCQ (A yes, B no, C maybe) with the abstract's contexts in the
prompt; ``LONG_ANSWER`` is kept in ``meta``. A filter keeps items whose MeSH terms or question
mention a term (``ophthalmology`` stands for the eye terms).
"""

from __future__ import annotations

import json

from eyeops.data.importers._benchmark import Filtered, collect, keyword_filter, mcq_prompt, require
from eyeops.data.importers._common import source_path, text, where
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task
from eyeops.errors import DataError

__all__ = ["COLUMNS", "DECISIONS", "load"]

COLUMNS = ("QUESTION", "CONTEXTS", "final_decision")
DECISIONS = ("yes", "no", "maybe")


def load(path: str | None, *, kind: str = "pubmedqa", filter: list[str] | None = None) -> ImportResult:
    src = source_path(path, kind=kind)
    try:
        data = json.loads(src.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(src)) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=str(src)
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"expected one object keyed by PMID ({{pmid: {{QUESTION, CONTEXTS, final_decision}}}}), "
            f"got a JSON {type(data).__name__}",
            file=str(src),
            field="<root>",
        )
    rows = [(i, item) for i, item in enumerate(data.values(), 1)]
    require(src, rows, COLUMNS)
    pmids = list(data)
    keep = keyword_filter(filter)

    def make(row_no: int, item: dict) -> RawRecord | Filtered | tuple[str, str]:
        meshes = item.get("MESHES") or []
        if not isinstance(meshes, list):
            return "MESHES", f"must be a list of MeSH terms, got {type(meshes).__name__}"
        question = text(item.get("QUESTION"))
        if keep and not keep(question, *map(text, meshes)):
            return Filtered("no filter term in MESHES or QUESTION")
        contexts = item.get("CONTEXTS")
        if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
            return "CONTEXTS", "must be a non-empty list of strings"
        if not question:
            return "QUESTION", "empty"
        decision = text(item.get("final_decision")).lower()
        if decision not in DECISIONS:
            return "final_decision", f"{decision or '<empty>'!r} is not yes, no or maybe"
        meta = {"pmid": pmids[row_no - 1], "meshes": "; ".join(map(text, meshes))}
        if text(item.get("LONG_ANSWER")):
            meta["long_answer"] = text(item.get("LONG_ANSWER"))
        prompt = mcq_prompt(question, DECISIONS, context=" ".join(c.strip() for c in contexts))
        return RawRecord(
            key=f"{row_no:06d}",
            task=Task.MCQ,
            where=where(src, row_no),
            messages=(Message(role="user", content=prompt),),
            answer="ABC"[DECISIONS.index(decision)],
            options=DECISIONS,
            source=kind,
            license="unknown",
            meta=meta,
        )

    return collect(src, rows, make)
