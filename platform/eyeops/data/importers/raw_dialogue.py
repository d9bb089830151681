"""Scraped doctor–patient consultations (MedDialog-style text), de-identified on import.

One file (or a directory of ``.txt`` files) holds records like::

    id=17
    https://www.haodf.com/wenda/....htm

    Doctor faculty
    眼科

    Description
    疾病：白内障
    病情描述：…

    Dialogue
    病人：
    医生您好，…
    医生：
    你好，…

Turns start with ``病人：``/``患者：`` (user) or ``医生：`` (assistant), or English ``Patient:`` /
``Doctor:``; the text may follow on the same line or the next ones. The description opens the first
user turn; consecutive turns of one side are merged; trailing patient turns (no reply) are dropped.
Names, hospitals, URLs, e-mails, phone and id numbers in the free text are masked
(:mod:`eyeops.data.deid_text`) and counted by kind; the page URL of each record is not kept. A
record without a doctor reply is quarantined with file, record id and reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from eyeops.data.deid_text import mask
from eyeops.data.importers._common import source_path
from eyeops.data.records import ImportResult, RawRecord
from eyeops.data.schema import Message, Task
from eyeops.errors import DataError

__all__ = ["load", "parse"]

_ID = re.compile(r"^\s*id\s*=\s*(\S+)\s*$", re.M)
_SECTIONS = {"doctor faculty": "faculty", "description": "description", "dialogue": "dialogue"}
_TURN = re.compile(r"^\s*(医生|大夫|病人|患者|Doctor|Patient)\s*[:：]\s*(.*)$", re.I)
_ROLE = {"医生": "assistant", "大夫": "assistant", "doctor": "assistant"}


def parse(block: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """One record's sections (``url``, ``faculty``, ``description``) and its ``(role, text)`` turns."""
    sections: dict[str, list[str]] = {"url": []}
    current = "url"
    turns: list[tuple[str, list[str]]] = []
    for line in block.splitlines()[1:]:  # line 0 is id=…
        header = _SECTIONS.get(line.strip().lower())
        if header is not None:
            current = header
            sections.setdefault(current, [])
            continue
        if current == "dialogue":
            turn = _TURN.match(line)
            if turn:
                turns.append((_ROLE.get(turn.group(1).lower(), "user"), [turn.group(2)]))
            elif turns:
                turns[-1][1].append(line)
            continue
        sections[current].append(line)
    text = {k: "\n".join(s.strip() for s in v if s.strip()) for k, v in sections.items()}
    return text, [(role, "\n".join(s.strip() for s in lines if s.strip())) for role, lines in turns]


def _messages(description: str, turns: list[tuple[str, str]]) -> list[Message] | str:
    merged: list[list[str]] = []  # [role, text]
    if description:
        merged.append(["user", description])
    for role, text in turns:
        if not text:
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
        else:
            merged.append([role, text])
    while merged and merged[-1][0] == "user":
        merged.pop()  # the patient's last words got no reply: nothing to learn from
    if not merged:
        return "no doctor reply"
    if merged[0][0] != "user":
        return "the dialogue starts with the doctor and there is no description"
    return [Message(role=role, content=text) for role, text in merged]  # type: ignore[arg-type]


def _files(path: str | None, kind: str) -> list[Path]:
    root = source_path(path, kind=kind)
    if root.is_dir():
        files = sorted(root.rglob("*.txt"))
        if not files:
            raise DataError("no .txt files under the directory", file=str(root))
        return files
    return [root]


def load(path: str | None, *, kind: str = "raw_dialogue") -> ImportResult:
    result = ImportResult()
    urls = 0

    def clean(text: str) -> str:
        text, counts = mask(text)
        result.masked.update(counts)
        return text

    files = _files(path, kind)
    seen: set[str] = set()
    for file in files:
        try:
            raw = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(file)) from None
        starts = [m.start() for m in _ID.finditer(raw)]
        if not starts:
            raise DataError("no 'id=…' record found (not the scraped dialogue format)", file=str(file))
        for start, end in zip(starts, [*starts[1:], len(raw)], strict=True):
            block = raw[start:end]
            rid = re.sub(r"[^\w-]", "_", _ID.match(block).group(1))  # type: ignore[union-attr]
            where = f"{file.name} id={rid}"
            key = f"{file.stem}-{rid}" if len(files) > 1 else rid
            if key in seen:
                result.reject(where, "repeated record id")
                continue
            seen.add(key)
            sections, turns = parse(block)
            if "dialogue" not in sections:
                result.reject(where, "no 'Dialogue' section")
                continue
            urls += bool(sections.get("url"))
            messages = _messages(
                clean(sections.get("description", "")), [(role, clean(text)) for role, text in turns]
            )
            if isinstance(messages, str):
                result.reject(where, messages)
                continue
            faculty = clean(sections.get("faculty", ""))
            result.records.append(
                RawRecord(
                    key=key,
                    task=Task.DIALOGUE if len(messages) > 2 else Task.TEXT_QA,
                    where=where,
                    messages=tuple(messages[:-1]),
                    answer=messages[-1].content,
                    source="raw_dialogue",
                    license="unknown (scraped consultations: check the site's terms)",
                    group=f"dialogue-{key}",
                    meta={"faculty": faculty} if faculty else {},
                )
            )
    kinds = ", ".join(sorted(result.masked)) or "nothing found"
    result.notes["deid"] = (
        f"free text masked by rules (eyeops.data.deid_text: {kinds}); "
        f"{urls} page URL(s) dropped; rules miss bare names without a title: review a sample"
    )
    return result
