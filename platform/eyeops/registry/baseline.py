"""What the gate compares a candidate with besides the champion: chance/majority and the base model.

- :func:`item_scores` — a metric's per-item scores from an evaluation's tables (``<task>/accuracy``
  → each item's ``correct``; ``<task>/<name>`` → each item's ``<name>``), keyed by sample id.
- :func:`chance_reference` — for accuracy metrics, the better of uniform guessing (1/k for k options,
  1/2 for yes/no, 0 for free text) and always giving the most frequent gold answer, per item; for
  AUC metrics, 0.5. Read from the evaluated dataset's samples.
- :func:`ensure_baseline` — the base model's zero-shot evaluation on the same split and sample limit,
  looked up in MLflow by ``eyeops.base_key`` x ``eyeops.eval_set`` and run (then logged as an
  ``eyeops.eval_kind=gate-baseline`` run) only when absent, so it is computed once per base model x
  benchmark fingerprint.
- :func:`log_candidate` — the candidate's evaluation logged beside it (``gate-candidate``), so the
  report table holds base and fine-tuned rows from the gate's own measurements.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from eyeops.errors import NotFoundError
from eyeops.recipes import Recipe
from eyeops.refs import DatasetRef, EvalReport
from eyeops.registry.gate import Reference

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def item_scores(tables: Mapping[str, list[dict]], metric: str) -> dict[str, float] | None:
    """Per-item scores behind ``<task>/<name>`` from tables named ``<task>`` or ``<task>_…``."""
    parts = metric.split("/")
    if len(parts) != 2:
        return None
    task, name = parts
    column = "correct" if name == "accuracy" else name
    out: dict[str, float] = {}
    for table, rows in tables.items():
        if table != task and not table.startswith(f"{task}_"):
            continue
        for row in rows:
            if "id" in row and column in row:
                out[str(row["id"])] = float(row[column])
    return out or None


def _gold_key(answer: str, options: list[str]) -> str:
    """An answer as the thing a constant guesser would say: the option letter, else the text."""
    text = answer.strip()
    if options:
        if len(text) == 1 and text.upper() in _LETTERS[: len(options)]:
            return text.upper()
        for i, option in enumerate(options):
            if option.strip().lower() == text.lower():
                return _LETTERS[i]
    return text.lower()


def _uniform(answer: str, options: list[str]) -> float:
    if options:
        return 1.0 / len(options)
    return 0.5 if answer.strip().lower() in ("yes", "no") else 0.0


def chance_reference(metric: str, report: EvalReport, dataset: DatasetRef | None) -> Reference:
    """Chance or majority, whichever scores higher on the items the candidate was scored on."""
    name = metric.rsplit("/", 1)[-1]
    if name.endswith("auc"):
        return Reference(name="chance", label="chance (AUC)", value=0.5)
    if name != "accuracy":
        return Reference(
            name="chance",
            label="chance",
            error=f"no chance level is defined for {metric!r} (only accuracy/AUC)",
        )
    candidate = item_scores(report.tables, metric)
    if not candidate:
        return Reference(
            name="chance", label="chance", error=f"the evaluation has no per-item {metric!r} scores"
        )
    if dataset is None:
        return Reference(
            name="chance", label="chance", error="register() was given no dataset to read answers from"
        )
    from eyeops.data.store import load_samples

    samples = {s.id: s for s in load_samples(dataset.uri) if s.id in candidate}
    missing = sorted(set(candidate) - set(samples))
    if missing:
        return Reference(
            name="chance",
            label="chance",
            error=f"{len(missing)} scored items are not in the dataset (e.g. {missing[0]!r})",
        )
    gold = {k: _gold_key(s.answer or "", list(s.options)) for k, s in samples.items()}
    uniform = {k: _uniform(s.answer or "", list(s.options)) for k, s in samples.items()}
    top, _ = Counter(gold.values()).most_common(1)[0]
    majority = {k: float(g == top) for k, g in gold.items()}
    n = len(candidate)
    u_mean, m_mean = sum(uniform.values()) / n, sum(majority.values()) / n
    if m_mean > u_mean:
        label, items, value = f"majority answer {top!r}", majority, m_mean
    else:
        label, items, value = "uniform guessing", uniform, u_mean
    return Reference(
        name="chance", label=label, value=value, candidate_items=candidate, reference_items=items
    )


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    base_model: str
    report: EvalReport
    cached: bool


def ensure_baseline(recipe: Recipe, dataset: DatasetRef) -> Baseline:
    """The base model's zero-shot evaluation of ``dataset`` under ``recipe``: cached or run once."""
    from eyeops.evaluate.benchmark import (
        benchmark_name,
        eval_set_key,
        evaluate_benchmarks,
        find_runs,
        load_report,
        recipe_for,
    )
    from eyeops.evaluate.targets import base_key, base_model_id, base_target

    scored = recipe_for(recipe, dataset, "recipe")
    filters = {
        "eyeops.eval_kind": "gate-baseline",
        "eyeops.base_key": base_key(recipe),
        "eyeops.eval_set": eval_set_key([(scored, dataset)]),
    }
    for run in find_runs(filters, max_results=1):
        try:
            report = load_report(run.info.run_id, benchmark_name(dataset))
        except NotFoundError:
            continue  # a run whose artifacts are gone: measure again
        return Baseline(run_id=run.info.run_id, base_model=base_model_id(recipe), report=report, cached=True)
    run = evaluate_benchmarks(base_target(recipe), [dataset], kind="gate-baseline")
    return Baseline(run_id=run.run_id, base_model=run.base_model, report=run.results[0].report, cached=False)


def baseline_reference(
    recipe: Recipe, metric: str, report: EvalReport, dataset: DatasetRef | None
) -> Reference:
    """The base model as a gate reference (evaluated or read from the MLflow cache)."""
    if dataset is None:
        return Reference(
            name="base_model", label="base model", error="register() was given no dataset to evaluate it on"
        )
    base = ensure_baseline(recipe, dataset)
    label = f"base model {base.base_model} (run {base.run_id[:8]}{', cached' if base.cached else ''})"
    if metric not in base.report.metrics:
        return Reference(name="base_model", label=label, error=f"its evaluation has no {metric!r}")
    return Reference(
        name="base_model",
        label=label,
        value=base.report.metrics[metric],
        candidate_items=item_scores(report.tables, metric),
        reference_items=item_scores(base.report.tables, metric),
    )


def gate_references(
    recipe: Recipe, metric: str, report: EvalReport, dataset: DatasetRef | None
) -> list[Reference]:
    """The references the recipe's gate asks for (``register.gate.chance`` / ``.baseline``)."""
    gate = recipe.register.gate
    refs = []
    if gate.chance:
        refs.append(chance_reference(metric, report, dataset))
    if gate.baseline:
        refs.append(baseline_reference(recipe, metric, report, dataset))
    return refs


def log_candidate(
    recipe: Recipe, checkpoint, report: EvalReport, dataset: DatasetRef, *, model_uri: str
) -> str:
    """The gated candidate's evaluation as an ``eyeops.eval_kind=gate-candidate`` run beside its
    base model's, so ``eyeops report`` shows both rows without evaluating again."""
    from eyeops.evaluate.benchmark import BenchmarkResult, benchmark_name, eval_set_key, log_run, recipe_for
    from eyeops.evaluate.targets import EvalTarget, base_model_id

    target = EvalTarget(
        label=model_uri.removeprefix("models:/"),
        kind="registered",
        recipe=recipe,
        checkpoint=checkpoint,
        base_model=base_model_id(recipe),
        model_uri=model_uri,
    )
    result = BenchmarkResult(name=benchmark_name(dataset), dataset=dataset, report=report)
    eval_set = eval_set_key([(recipe_for(recipe, dataset, "recipe"), dataset)])
    return log_run(target, [result], kind="gate-candidate", eval_set=eval_set)
