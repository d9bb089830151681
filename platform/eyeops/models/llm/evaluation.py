"""The ``llm`` family's evaluation hook: generate answers for the eval split and score them.

MCQ samples → accuracy (letters parsed from free text, matched to gold by sample id); essay-style
samples (text_qa, open_qa, report, dialogue) → ROUGE-L, BLEU, METEOR, SemScore, BERTScore (encoders
from the recipe's evaluate section) and, when ``evaluate.judge`` is set, an LLM judge. Both overall and
per dataset (``source/<name>/…``) and per topic (``topic/<name>/…``); every generation is kept in
the ``mcq_generations`` / ``essay_generations`` tables that the registry logs to MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence

from eyeops.data.schema import Sample, Task
from eyeops.errors import DataError
from eyeops.evaluate import judge
from eyeops.evaluate import text_metrics as tm
from eyeops.families import EvalContext, EvalOutput
from eyeops.inference import GenerationRequest, GenerationResult
from eyeops.models.llm import data as D


def _topic(sample: Sample) -> str:
    return sample.meta.get("topic") or "unknown"


def _generate(ctx: EvalContext, samples: Sequence[Sample], max_new_tokens: int) -> list[GenerationResult]:
    out: list[GenerationResult] = []
    for start in range(0, len(samples), ctx.batch_size):
        chunk = samples[start : start + ctx.batch_size]
        # The model adds its own system prompt (ChatModel), so only the sample's turns go in.
        requests = [
            GenerationRequest(messages=D.prompt_messages(s), max_new_tokens=max_new_tokens, temperature=0.0)
            for s in chunk
        ]
        out.extend(ctx.model.generate(requests))
    return out


def _regroup(scores: dict[str, float], prefix: str, kind: str) -> dict[str, float]:
    """``{"<group>/<metric>": v}`` → ``{"<prefix>/<group>/<kind>/<metric>": v}`` (overall keys dropped)."""
    out = {}
    for key, value in scores.items():
        if "/" in key:
            group, name = key.rsplit("/", 1)
            out[f"{prefix}/{group}/{kind}/{name}"] = value
    return out


def _question(sample: Sample) -> str:
    return D.prompt_messages(sample)[-1]["content"]


def evaluate_text(ctx: EvalContext) -> EvalOutput:
    """Metrics and tables for one split (see the module docstring)."""
    from eyeops.data.store import load_samples

    spec = ctx.recipe.model
    wanted = set(ctx.samples["id"])
    samples = [s for s in load_samples(ctx.data_dir, split=ctx.recipe.evaluate.split) if s.id in wanted]
    text = [s for s in samples if D.is_text_sample(s)]
    mcq = [s for s in text if s.task == Task.MCQ]
    essay = [s for s in text if s.task in D.ESSAY_TASKS]
    if not mcq and not essay:
        raise DataError(
            f"split {ctx.recipe.evaluate.split!r} has no text MCQ or essay samples to evaluate "
            f"({len(samples)} samples, tasks {sorted({s.task.value for s in samples})})",
            file=str(ctx.data_dir),
            field="task",
        )
    metrics: dict[str, float] = {}
    tables: dict[str, list[dict[str, str | float | int]]] = {}
    notes: list[str] = []
    artifacts: dict[str, str] = {}
    if mcq:
        answers = _generate(ctx, mcq, min(spec.eval_max_new_tokens, 32))
        predictions = {s.id: a.text for s, a in zip(mcq, answers, strict=True)}
        gold = {s.id: D.mcq_letter(s) for s in mcq}
        options = {s.id: s.options for s in mcq}
        metrics.update({f"mcq/{k}": v for k, v in tm.mcq_accuracy(gold, predictions, options).items()})
        for prefix, groups in (
            ("source", {s.id: s.source for s in mcq}),
            ("topic", {s.id: _topic(s) for s in mcq}),
        ):
            metrics.update(
                _regroup(tm.mcq_accuracy(gold, predictions, options, groups=groups), prefix, "mcq")
            )
        judged = {r["id"]: r for r in tm.mcq_judgements(gold, predictions, options)}
        for s in mcq:
            j = judged[s.id]
            tables.setdefault("mcq_generations", []).append(
                {
                    "id": s.id,
                    "task": s.task.value,
                    "source": s.source,
                    "topic": _topic(s),
                    "question": _question(s),
                    "reference": gold[s.id],
                    "prediction": predictions[s.id],
                    "parsed": j["parsed"],
                    "status": j["status"],
                    "correct": j["correct"],
                }
            )
    if essay:
        answers = _generate(ctx, essay, spec.eval_max_new_tokens)
        refs = [D.reference_answer(s) for s in essay]
        preds = [a.text for a in answers]
        scorer = tm.EssayMetrics.from_spec(ctx.recipe.evaluate)
        items = scorer.item_scores(refs, preds)  # scored once, summarised per group below
        metrics.update({f"essay/{k}": v for k, v in scorer.scores(refs, preds, items=items).items()})
        for prefix, groups in (("source", [s.source for s in essay]), ("topic", [_topic(s) for s in essay])):
            grouped = scorer.scores(refs, preds, groups=groups, items=items)
            metrics.update(_regroup(grouped, prefix, "essay"))
        for s, ref, pred, item in zip(essay, refs, preds, items, strict=True):
            tables.setdefault("essay_generations", []).append(
                {
                    "id": s.id,
                    "task": s.task.value,
                    "source": s.source,
                    "topic": _topic(s),
                    "question": _question(s),
                    "reference": ref,
                    "prediction": pred,
                    **{k: round(v, 4) for k, v in item.items()},
                }
            )
        if not tm.meteor_uses_wordnet():
            notes.append("METEOR computed without WordNet synonyms (Debian wordnet-base not installed)")
        notes += scorer.notes()
        if ctx.recipe.evaluate.judge is not None:
            verdict = judge.judge_answers(
                ctx.recipe.evaluate.judge,
                [
                    judge.JudgeItem(s.id, _question(s), r, p)
                    for s, r, p in zip(essay, refs, preds, strict=True)
                ],
                ctx.out_dir,
            )
            metrics.update({f"essay/{k}": v for k, v in verdict.metrics.items()})
            tables["judge_essay"] = verdict.rows
            artifacts |= verdict.artifacts
    return EvalOutput(
        num_samples=len(mcq) + len(essay), metrics=metrics, tables=tables, notes=notes, artifacts=artifacts
    )
