"""LLaVA-style conversation JSON (Eyecare-100K, VL-Health): images + human/gpt turns.

``[{"id": …, "image": "a.jpg" | ["a.jpg", "b.jpg"], "conversations": [{"from": "human",
"value": "<image>\\n…"}, {"from": "gpt", "value": "…"}, …]}, …]`` as .json or .jsonl. Optional
keys: ``modality``, ``eye``, ``patient_id``, ``task``; for image generation (VL-Health's
generation data) ``target_image`` (the image the answer is; the sample becomes ``generate_image``),
``generation`` (reconstruction, super_resolution, modality_conversion, text_to_image) and
``target_modality``. Images resolve against ``image_dir``, the
file's folder or its ``images/`` subfolder. The last gpt turn is the answer; earlier turns stay in
``messages``. Without a ``task`` key: several user turns → dialogue, a yes/no or single-letter
answer → closed_qa, otherwise open_qa.
"""

from __future__ import annotations

from pathlib import Path

from eyeops.data.importers._common import read_rows, source_path, text, where
from eyeops.data.records import ImageInput, ImportResult, RawRecord
from eyeops.data.schema import IMAGE_TOKEN, Eye, Message, Modality, Task

__all__ = ["load"]

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _resolve(base: Path, name: str) -> Path:
    for candidate in (base / name, base / "images" / name):
        if candidate.is_file():
            return candidate
    return base / name


def _infer_task(messages: list[Message], answer: str) -> Task:
    if sum(m.role == "user" for m in messages) > 1:
        return Task.DIALOGUE
    short = answer.strip().rstrip(".").lower()
    if short in ("yes", "no") or (len(short) == 1 and short in "abcde"):
        return Task.CLOSED_QA
    return Task.OPEN_QA


def _record(src: Path, base: Path, row_no: int, item: object) -> RawRecord | tuple[str, str]:
    """A record, or ``(field, reason)`` when the item is unusable."""
    if not isinstance(item, dict):
        return "<record>", f"expected an object, got {type(item).__name__}"
    images = item.get("image", item.get("images", []))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        return "image", "must be a file name or a list of file names"
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        return "conversations", "missing or empty"
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"conversations[{i}]", "each turn needs a 'from' and a string 'value'"
        role = _ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            return f"conversations[{i}].from", f"unknown speaker {turn.get('from')!r} (human, gpt, system)"
        messages.append(Message(role=role, content=turn["value"]))
    if messages[-1].role != "assistant":
        return "conversations", "the last turn must be the gpt answer"
    tokens = sum(m.content.count(IMAGE_TOKEN) for m in messages if m.role == "user")
    if tokens == 0 and images:  # many exports omit the placeholder: put it where LLaVA expects it
        first = next(i for i, m in enumerate(messages) if m.role == "user")
        prefix = "\n".join([IMAGE_TOKEN] * len(images)) + "\n"
        messages[first] = Message(role="user", content=prefix + messages[first].content)
    elif tokens != len(images):
        return "conversations", f"{tokens} {IMAGE_TOKEN} placeholder(s) for {len(images)} image(s)"
    answer = messages.pop().content
    task_name = text(item.get("task"))
    if task_name and task_name not in Task._value2member_map_:
        return "task", f"unknown task {task_name!r} (known: {', '.join(t.value for t in Task)})"
    target = item.get("target_image")
    if target is not None:
        if not isinstance(target, str) or not target:
            return "target_image", "must be a file name"
        if task_name and task_name != Task.GENERATE_IMAGE:
            return "target_image", f"a target image makes a generate_image sample, not {task_name!r}"
        task_name = Task.GENERATE_IMAGE.value
    elif task_name == Task.GENERATE_IMAGE:
        return "target_image", "a generate_image sample needs the target image it answers with"
    meta = {k: text(item.get(k)) for k in ("generation", "target_modality") if text(item.get(k))}
    modality = text(item.get("modality")).lower().replace("-", "_").replace(" ", "_") or "fundus"
    if modality not in Modality._value2member_map_:
        return "modality", f"unknown modality {modality!r} (known: {', '.join(m.value for m in Modality)})"
    eye = text(item.get("eye")).upper() or None
    if eye is not None and eye not in Eye._value2member_map_:
        return "eye", f"unknown eye {eye!r} (OD, OS, OU)"
    ref = where(src, row_no, "image")
    return RawRecord(
        key=f"{row_no:06d}",
        task=Task(task_name) if task_name else _infer_task(messages, answer),
        where=where(src, row_no),
        images=tuple(
            ImageInput(ref=f"{ref}[{i}]", path=str(_resolve(base, name))) for i, name in enumerate(images)
        ),
        patient=text(item.get("patient_id")) or None,
        eye=Eye(eye) if eye else None,
        target=ImageInput(ref=f"{ref}:target", path=str(_resolve(base, target))) if target else None,
        modality=Modality(modality) if images else Modality.NONE,
        messages=tuple(messages),
        answer=None if target else answer,
        source="llava",
        license=text(item.get("license")) or "unknown",
        meta=meta,
    )


def load(path: str | None, *, kind: str = "llava", image_dir: str | None = None) -> ImportResult:
    src = source_path(path, kind=kind)
    base = Path(image_dir) if image_dir else src.parent
    result = ImportResult()
    for row_no, item in read_rows(src):
        record = _record(src, base, row_no, item)
        if isinstance(record, tuple):
            result.reject(where(src, row_no, record[0]), record[1])
        else:
            result.records.append(record)
    return result
