"""Alpaca with history (OphGLM dialogue style): ``instruction, input, output, history``.

``history`` is a list of ``[user, assistant]`` pairs that came before; any language works (files
are read as UTF-8, Chinese included, and stored unchanged). A record with history becomes a
``dialogue`` sample, one without a ``text_qa`` sample.
"""

from __future__ import annotations

from eyeops.data.importers._common import read_rows, source_path, where
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task

__all__ = ["load"]


def _record(item: object, src, row_no: int) -> RawRecord | tuple[str, str]:
    if not isinstance(item, dict):
        return "<record>", f"expected an object, got {type(item).__name__}"
    for name in ("instruction", "output"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            return name, "missing or empty" if value in (
                None,
                "",
            ) else f"must be text, got {type(value).__name__}"
    extra = item.get("input", "")
    if not isinstance(extra, str):
        return "input", f"must be text, got {type(extra).__name__}"
    history = item.get("history") or []
    if not isinstance(history, list):
        return "history", f"must be a list of [user, assistant] pairs, got {type(history).__name__}"
    messages: list[Message] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            return f"history[{i}]", "each entry must be a [user, assistant] pair of strings"
        messages += [Message(role="user", content=pair[0]), Message(role="assistant", content=pair[1])]
    prompt = item["instruction"].strip() + (f"\n{extra.strip()}" if extra.strip() else "")
    messages.append(Message(role="user", content=prompt))
    return RawRecord(
        key=f"{row_no:06d}",
        task=Task.DIALOGUE if history else Task.TEXT_QA,
        where=where(src, row_no),
        messages=tuple(messages),
        answer=item["output"].strip(),
        source="alpaca",
        license=str(item.get("license") or "unknown"),
    )


def load(path: str | None, *, kind: str = "alpaca") -> ImportResult:
    src = source_path(path, kind=kind)
    result = ImportResult()
    for row_no, item in read_rows(src):
        record = _record(item, src, row_no)
        if isinstance(record, tuple):
            result.reject(where(src, row_no, record[0]), record[1])
        else:
            result.records.append(record)
    return result
