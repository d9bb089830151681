"""Eyecare-Bench style evaluation of the VLM family (the runner calls ``FAMILY.evaluate(ctx)``).

- closed QA: accuracy; the answer letter (options), yes/no, or a short answer without options
  (VQA-RAD / SLAKE "left", "CT", "2": normalised match) is parsed from free text, and an
  unparseable answer counts as wrong and is counted (``unparseable``, ``unparsed_rate``);
- open QA: BLEU / ROUGE-L / METEOR / SemScore / BERTScore (the shared
  :mod:`eyeops.evaluate.text_metrics`, encoders from the recipe's evaluate section), plus the
  optional LLM judge (:mod:`eyeops.evaluate.judge`) when ``evaluate.judge`` is set;
- report generation: the same, plus a per-section check: Examination Type, Image Description and
  Diagnostic Recommendation present, and the recommendation naming the label's disease keywords.
One table per task x modality (a row per sample: prediction, reference, scores), flat metrics
``<task>/<metric>`` and ``<task>/<modality>/<metric>``, and a few sample generations with their
images written under ``out_dir/samples`` for the registry to log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from eyeops.data.schema import IMAGE_TOKEN, ODIR_LABEL_NAMES, ODIR_LABELS, Message
from eyeops.errors import DataError
from eyeops.evaluate import judge
from eyeops.evaluate import text_metrics as tm
from eyeops.evaluate.text_metrics import parse_yes_no as parse_yes_no  # re-exported
from eyeops.families import EvalContext, EvalOutput
from eyeops.inference import GenerationRequest
from eyeops.models.common.processing import open_image

TASKS = ("closed_qa", "open_qa", "report")
SECTIONS = ("Examination Type", "Image Description", "Diagnostic Recommendation")
_CLOSED_QA_TOKENS = 16
_SAMPLE_GENERATIONS = 8


def report_sections(text: str) -> dict[str, str]:
    """``{section: body}`` for each of the three report headings found (case-insensitive)."""
    pattern = re.compile(r"(" + "|".join(re.escape(s) for s in SECTIONS) + r")\s*:", re.IGNORECASE)
    found = list(pattern.finditer(text))
    out = {}
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        name = next(s for s in SECTIONS if s.lower() == match.group(1).lower())
        out[name] = text[match.end() : end].strip()
    return out


def disease_keywords(row: dict[str, Any], label_names: Sequence[str]) -> list[str]:
    """The diseases a report must name: ``meta['keywords']`` when the data engine set it, else the
    positive labels' names (ODIR codes spelled out)."""
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta or "{}")
    if meta.get("keywords"):
        return [k.strip().lower() for k in str(meta["keywords"]).split(",") if k.strip()]
    labels = list(row.get("labels") if row.get("labels") is not None else [])
    return [
        ODIR_LABEL_NAMES.get(code, code).lower() for code, v in zip(label_names, labels, strict=False) if v
    ]


def report_check(prediction: str, keywords: Sequence[str]) -> dict[str, float]:
    """Per-section presence and whether the recommendation names every keyword."""
    sections = report_sections(prediction)
    out = {f"has_{s.lower().replace(' ', '_')}": float(bool(sections.get(s))) for s in SECTIONS}
    out["sections_complete"] = float(all(sections.get(s) for s in SECTIONS))
    recommendation = " ".join(
        sections.get(s, "") for s in ("Diagnostic Recommendation", "Image Description")
    ).lower()
    out["keyword_match"] = float(bool(keywords) and all(k in recommendation for k in keywords))
    return out


def _messages(row: dict[str, Any]) -> list[Message]:
    turns = [Message(**m) if isinstance(m, dict) else m for m in row["messages"]]
    # Evaluate on the conversation up to the last user turn; the reference answer is row["answer"].
    while turns and turns[-1].role == "assistant":
        turns.pop()
    return turns


def _generate(ctx: EvalContext, rows: list[dict[str, Any]]) -> list[str]:
    spec = ctx.recipe.model
    out: list[str] = []
    for start in range(0, len(rows), ctx.batch_size):
        chunk = rows[start : start + ctx.batch_size]
        requests = []
        for row in chunk:
            where = f"sample {row['id']!r}"
            images = [open_image(ctx.data_dir / rel, where=where) for rel in row["images"]]
            limit = _CLOSED_QA_TOKENS if row["task"] == "closed_qa" else spec.eval_max_new_tokens
            requests.append(GenerationRequest(messages=_messages(row), images=images, max_new_tokens=limit))
        out.extend(r.text for r in ctx.model.generate(requests))
    return out


def _closed_qa(rows: list[dict], preds: list[str]) -> list[dict[str, Any]]:
    table = []
    for row, pred in zip(rows, preds, strict=True):
        gold, options = str(row["answer"]).strip(), list(row.get("options") or [])
        verdict = tm.closed_judgement(str(row["id"]), gold, pred, options or None)
        table.append(
            {
                "id": row["id"],
                "prediction": pred,
                "reference": gold,
                "parsed": verdict["parsed"],
                "correct": verdict["correct"],
                "status": verdict["status"],
            }
        )
    return table


def _text_task(
    rows: list[dict], preds: list[str], task: str, label_names: Sequence[str], essay: tm.EssayMetrics
) -> list[dict]:
    refs = [str(r["answer"]) for r in rows]
    scores = essay.item_scores(refs, preds)
    table = []
    for row, pred, ref, score in zip(rows, preds, refs, scores, strict=True):
        item = {"id": row["id"], "prediction": pred, "reference": ref, **score}
        if task == "report":
            item |= report_check(pred, disease_keywords(row, label_names))
        table.append(item)
    return table


def _summary(task: str, table: list[dict]) -> dict[str, float]:
    n = len(table)
    if task == "closed_qa":  # every row has an answer here: no "missing"
        return {k: v for k, v in tm.closed_summary(table).items() if k != "missing"}
    refs, preds = [r["reference"] for r in table], [r["prediction"] for r in table]
    out = {"n": float(n), "bleu": tm.bleu(refs, preds)}
    keys = [k for k in table[0] if k not in ("id", "prediction", "reference", "bleu")]
    out |= {k: sum(float(r[k]) for r in table) / n for k in keys}
    return out


def _question(row: dict[str, Any]) -> str:
    text = next((m["content"] for m in reversed(_as_dicts(row)) if m["role"] == "user"), "")
    return text.replace(IMAGE_TOKEN, "").strip()


def _as_dicts(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else m.model_dump() for m in row["messages"]]


def _judged(ctx: EvalContext, table: list[dict], rows: list[dict]) -> judge.JudgeResult:
    by_id = {str(r["id"]): r for r in rows}
    items = [
        judge.JudgeItem(str(t["id"]), _question(by_id[str(t["id"])]), t["reference"], t["prediction"])
        for t in table
    ]
    return judge.judge_answers(ctx.recipe.evaluate.judge, items, ctx.out_dir)


def evaluate_vlm(ctx: EvalContext) -> EvalOutput:
    """The Family.evaluate hook: generate for every VLM task sample of the split and score it."""

    frame = ctx.samples
    # pandas holds list columns as numpy arrays: back to plain lists before any truth test.
    records = [
        {k: v.tolist() if hasattr(v, "tolist") else v for k, v in r.items()} for r in frame.to_dict("records")
    ]
    rows = [r for r in records if r.get("task") in TASKS and r.get("answer")]
    if not rows:
        raise DataError(
            f"no {'/'.join(TASKS)} samples with an answer in split {ctx.recipe.evaluate.split!r}",
            field="task",
        )
    label_names = (
        list(ctx.manifest.label_names) if ctx.manifest and ctx.manifest.label_names else list(ODIR_LABELS)
    )
    preds = _generate(ctx, rows)
    essay = tm.EssayMetrics.from_spec(ctx.recipe.evaluate)
    metrics: dict[str, float] = {}
    tables: dict[str, list[dict]] = {}
    artifacts: dict[str, str] = {}
    for task in TASKS:
        picked = [(r, p) for r, p in zip(rows, preds, strict=True) if r["task"] == task]
        if not picked:
            continue
        by_modality: dict[str, list] = {}
        for r, p in picked:
            by_modality.setdefault(str(r.get("modality") or "none"), []).append((r, p))
        full: list[dict] = []
        for modality, pairs in sorted(by_modality.items()):
            task_rows, task_preds = [r for r, _ in pairs], [p for _, p in pairs]
            table = (
                _closed_qa(task_rows, task_preds)
                if task == "closed_qa"
                else _text_task(task_rows, task_preds, task, label_names, essay)
            )
            tables[f"{task}_{modality}"] = table
            full.extend(table)
            metrics |= {f"{task}/{modality}/{k}": v for k, v in _summary(task, table).items()}
        metrics |= {f"{task}/{k}": v for k, v in _summary(task, full).items()}
        if task != "closed_qa" and ctx.recipe.evaluate.judge is not None:
            verdict = _judged(ctx, full, [r for r, _ in picked])
            metrics |= {f"{task}/{k}": v for k, v in verdict.metrics.items()}
            tables[f"judge_{task}"] = verdict.rows
            artifacts |= verdict.artifacts
    artifacts |= _write_samples(ctx, rows, preds)
    notes = (
        [] if tm.meteor_uses_wordnet() else ["METEOR without WordNet synonyms (wordnet-base not installed)"]
    )
    if any(r["task"] != "closed_qa" for r in rows):
        notes += essay.notes()
    return EvalOutput(
        num_samples=len(rows),
        metrics=metrics,
        tables=tables,
        notes=notes,
        artifacts=artifacts,
        labels=label_names,
    )


def _write_samples(ctx: EvalContext, rows: list[dict], preds: list[str]) -> dict[str, str]:
    """A few generations with their (downscaled) images, for the registry to log next to the metrics."""
    folder = ctx.out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for row, pred in list(zip(rows, preds, strict=True))[:_SAMPLE_GENERATIONS]:
        names = []
        for k, rel in enumerate(row["images"]):
            image = open_image(ctx.data_dir / rel, where=f"sample {row['id']!r}")
            image.thumbnail((256, 256))
            name = f"{row['id']}_{k}.png"
            image.save(folder / name)
            names.append(name)
        question = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        lines.append(
            json.dumps(
                {
                    "id": row["id"],
                    "task": row["task"],
                    "modality": row.get("modality"),
                    "question": question,
                    "prediction": pred,
                    "reference": row["answer"],
                    "images": names,
                },
                ensure_ascii=False,
            )
        )
    (folder / "generations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"sample_generations": str(folder / "generations.jsonl"), "sample_images": str(folder)}
