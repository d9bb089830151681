"""Evaluate one model on a set of benchmarks; one MLflow run per model x benchmark set.

:func:`evaluate_benchmarks` runs the ordinary evaluate stage (:func:`eyeops.evaluate.runner.evaluate`,
the family's own scorer) on each prepared dataset — an evaluation-only benchmark (``data.role:
benchmark``) is scored on its whole test split — and logs the results as one run in the MLflow
experiment :data:`EXPERIMENT`:

- metrics ``<benchmark>/<metric>`` (e.g. ``medmcqa/mcq/accuracy``);
- each benchmark as an MLflow dataset input (``mlflow.data.MetaDataset``, digest = the dataset
  fingerprint, context ``benchmark``);
- the per-item tables through ``mlflow.log_table`` (MLflow's evaluation viewer reads them), the
  report JSON (``reports/<benchmark>.json``) and the report directory;
- tags saying what was measured: ``eyeops.eval_kind`` (``benchmark``; ``gate-baseline`` / ``gate-candidate``
  for the base model and the candidate a gate compared, see :mod:`eyeops.registry.baseline`),
  ``eyeops.model`` (the report's row label), ``eyeops.model_kind`` (base | registered | checkpoint),
  ``eyeops.recipe``, ``eyeops.base_model``, ``eyeops.base_key``, ``eyeops.benchmarks`` and
  ``eyeops.eval_set`` (a hash of the benchmark fingerprints and the evaluation settings).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from eyeops.config import get_settings
from eyeops.data.store import read_manifest
from eyeops.evaluate.targets import EvalTarget, base_key
from eyeops.recipes import Recipe
from eyeops.refs import DatasetRef, EvalReport

EXPERIMENT = "eyeops-benchmarks"
EvalKind = Literal["benchmark", "gate-baseline", "gate-candidate"]
_DIGEST_CHARS = 32  # MLflow's dataset digest column is short


class BenchmarkResult(BaseModel):
    """One benchmark's evaluation inside a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dataset: DatasetRef
    report: EvalReport


class BenchmarkRun(BaseModel):
    """One MLflow run: a model on a set of benchmarks."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    run_id: str
    label: str
    kind: str
    recipe: str
    base_model: str
    eval_set: str
    results: list[BenchmarkResult]

    def metrics(self) -> dict[str, float]:
        """``<benchmark>/<metric>`` → value, as logged."""
        return {f"{r.name}/{k}": v for r in self.results for k, v in r.report.metrics.items()}


def benchmark_name(dataset: DatasetRef) -> str:
    """The column prefix of a dataset in reports: its prepared name (safe for MLflow keys)."""
    name = dataset.name or read_manifest(dataset.uri).name or dataset.fingerprint[:12]
    return re.sub(r"[^\w\-.]", "_", name)


def recipe_for(recipe: Recipe, dataset: DatasetRef, max_per_task: int | Literal["recipe"] | None) -> Recipe:
    """The recipe a dataset is scored with: benchmarks on their whole test split; ``max_per_task``
    overrides the recipe's limit (``None``: every sample; ``"recipe"``: keep it)."""
    overrides: dict[str, object] = {}
    if read_manifest(dataset.uri).benchmark is not None:
        overrides["evaluate.split"] = "test"
    if max_per_task != "recipe":
        overrides["evaluate.max_per_task"] = max_per_task
    return recipe.with_overrides(overrides) if overrides else recipe


def eval_set_key(scored: Sequence[tuple[Recipe, DatasetRef]]) -> str:
    """The benchmark-set fingerprint: each dataset by content with the split and sample limit scored."""
    data = sorted(
        [d.fingerprint, r.evaluate.split, r.evaluate.max_per_task if r.evaluate.max_per_task else 0]
        for r, d in scored
    )
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _out_dir(label: str, name: str, root: str | None, *, several: bool) -> str:
    if root:
        return str(Path(root) / name) if several else root
    settings = get_settings()
    slug = re.sub(r"[^\w\-.]+", "_", label).strip("_") or "model"
    if settings.is_local_storage:
        return settings.path("evaluations", "benchmarks", slug, name)
    return tempfile.mkdtemp(prefix=f"eyeops-bench-{slug}-{name}-")


def evaluate_benchmarks(
    target: EvalTarget,
    datasets: Sequence[DatasetRef],
    *,
    max_per_task: int | Literal["recipe"] | None = "recipe",
    device: str | None = None,
    kind: EvalKind = "benchmark",
    batch_size: int = 32,
    out_dir: str | None = None,
    log: bool = True,
) -> BenchmarkRun:
    """Score ``target`` on every dataset and log one MLflow run (see the module docstring).

    Reports go to ``out_dir`` (``<out_dir>/<benchmark>`` for several), else under the storage root;
    ``log=False`` skips MLflow (``run_id`` is then empty).
    """
    from eyeops.errors import ConfigError
    from eyeops.evaluate.runner import evaluate

    if not datasets:
        raise ConfigError("no benchmark datasets given (--data DIR, repeatable)")
    names = [benchmark_name(d) for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark names must differ within one run (got {names})")
    results, scored = [], []
    for name, dataset in zip(names, datasets, strict=True):
        recipe = recipe_for(target.recipe, dataset, max_per_task)
        scored.append((recipe, dataset))
        report = evaluate(
            recipe,
            target.checkpoint,
            dataset,
            out_dir=_out_dir(target.label, name, out_dir, several=len(datasets) > 1),
            device=device,
            batch_size=batch_size,
            require_primary=False,
        )
        results.append(BenchmarkResult(name=name, dataset=dataset, report=report))
    eval_set = eval_set_key(scored)
    run_id = log_run(target, results, kind=kind, eval_set=eval_set) if log else ""
    return BenchmarkRun(
        run_id=run_id,
        label=target.label,
        kind=target.kind,
        recipe=target.recipe.name,
        base_model=target.base_model,
        eval_set=eval_set,
        results=results,
    )


def run_tags(target: EvalTarget, results: Sequence[BenchmarkResult], *, kind: str, eval_set: str) -> dict:
    tags = {
        "eyeops.eval_kind": kind,
        "eyeops.model": target.label,
        "eyeops.model_kind": target.kind,
        "eyeops.recipe": target.recipe.name,
        "eyeops.family": target.recipe.family,
        "eyeops.base_model": target.base_model,
        "eyeops.base_key": base_key(target.recipe),
        "eyeops.checkpoint_fingerprint": target.checkpoint.fingerprint,
        "eyeops.benchmarks": ",".join(r.name for r in results),
        "eyeops.eval_set": eval_set,
    }
    tags |= {f"eyeops.benchmark.{r.name}": r.dataset.fingerprint for r in results}
    if target.model_uri:
        tags["eyeops.model_uri"] = target.model_uri
    return tags


def log_run(target: EvalTarget, results: Sequence[BenchmarkResult], *, kind: str, eval_set: str) -> str:
    """Log evaluations already made as one run of :data:`EXPERIMENT`; returns its id."""
    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from eyeops.registry.mlflow_registry import client, experiment_id, mlflow_errors, safe_key

    c = client()
    tags = run_tags(target, results, kind=kind, eval_set=eval_set)
    run_name = f"{target.label} | {','.join(r.name for r in results)}"
    with mlflow_errors(f"logging the evaluation of {target.label!r}"):
        experiment = experiment_id(c, EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment, run_name=run_name[:250], tags=tags) as run:
            mlflow.log_params({"recipe": target.recipe.name, "model": target.label[:500]})
            for r in results:
                with warnings.catch_warnings():  # a local path matches two equivalent source types
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(r.dataset.uri)
                digest = r.dataset.fingerprint[:_DIGEST_CHARS]
                mlflow.log_input(MetaDataset(source, name=r.name, digest=digest), context="benchmark")
                mlflow.log_metrics({safe_key(f"{r.name}/{k}"): v for k, v in r.report.metrics.items()})
                mlflow.log_dict(r.report.model_dump(mode="json"), f"reports/{r.name}.json")
                for table, rows in r.report.tables.items():
                    if rows:
                        mlflow.log_table(pd.DataFrame(rows), artifact_file=f"tables/{r.name}/{table}.json")
                if Path(r.report.uri).is_dir():
                    mlflow.log_artifacts(r.report.uri, artifact_path=f"evaluations/{r.name}")
            return run.info.run_id


def load_report(run_id: str, name: str) -> EvalReport:
    """The :class:`EvalReport` of benchmark ``name`` logged by run ``run_id``."""
    import mlflow

    from eyeops.registry.mlflow_registry import client, mlflow_errors

    client()
    with mlflow_errors(f"reading the report of {name!r} from run {run_id}"):
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/reports/{name}.json")
    return EvalReport.model_validate(data)


def find_runs(filters: Mapping[str, str], *, max_results: int = 1000) -> list:
    """Finished runs of :data:`EXPERIMENT` whose tags equal ``filters``, newest first."""
    from eyeops.registry.mlflow_registry import client, mlflow_errors

    c = client()
    with mlflow_errors("searching evaluation runs"):
        experiment = c.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            return []
        clauses = ["attributes.status = 'FINISHED'"]
        clauses += [f"tags.`{k}` = '{_quote(v)}'" for k, v in sorted(filters.items())]
        return c.search_runs(
            [experiment.experiment_id],
            " and ".join(clauses),
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )


def _quote(value: str) -> str:
    return value.replace("'", "\\'")
