"""The data quality report of a dataset: ``quality.json`` + a self-contained ``quality.html``.

Counts per task / modality / source / split, the answer balance of closed QA and MCQ (a set where
one answer dominates teaches a model to guess it), word-length distributions of prompts and
answers per task, rejected records by reason (quarantine, filters, the LLM engine's rejections),
identifiers masked by kind, the LLM engine's counts and the mix. ``prepare`` writes both files into
the dataset (so they are hashed into its fingerprint); :func:`log_to_mlflow` logs them with the
dataset as an MLflow run (the HTML renders in the run's artifact view) and the samples as the
run's dataset input.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eyeops.data.schema import Manifest, Sample, Task

__all__ = ["REPORT_HTML", "REPORT_JSON", "log_to_mlflow", "quality_stats", "render_html", "write_report"]

REPORT_HTML, REPORT_JSON = "quality.html", "quality.json"
_CHOICE_TASKS = (Task.CLOSED_QA, Task.MCQ)
_BINS = (0, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


_WORD = re.compile(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+")  # a CJK character counts as a word


def _words(text: str | None) -> int:
    return len(_WORD.findall(text or ""))


def _lengths(values: Sequence[int]) -> dict[str, Any]:
    arr = np.asarray(values or [0])
    hist, _ = np.histogram(arr, bins=[*_BINS, max(_BINS[-1] + 1, int(arr.max()) + 1)])
    labels = [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(_BINS)] + [f"{_BINS[-1]}+"]
    return {
        "n": len(values),
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "max": int(arr.max()),
        "histogram": {k: int(v) for k, v in zip(labels, hist, strict=True) if v},
    }


def quality_stats(samples: Sequence[Sample], manifest: Manifest) -> dict[str, Any]:
    """Everything the report shows, as plain JSON."""
    by = {
        name: dict(Counter(str(getattr(s, name)) for s in samples).most_common())
        for name in ("task", "modality", "source", "split")
    }
    balance: dict[str, dict[str, int]] = {}
    for s in samples:
        if s.task in _CHOICE_TASKS and s.answer:
            balance.setdefault(str(s.task), Counter())[s.answer.strip()] += 1  # type: ignore[index]
    lengths: dict[str, dict[str, Any]] = {}
    for task in sorted({str(s.task) for s in samples if s.messages or s.answer}):
        rows = [s for s in samples if str(s.task) == task]
        lengths[task] = {
            "prompt_words": _lengths([sum(_words(m.content) for m in s.messages) for s in rows]),
            "answer_words": _lengths([_words(s.answer) for s in rows]),
        }
    generation = manifest.generation or {}
    rejected = Counter(manifest.quarantine_counts)
    rejected.update({f"filtered: {k}": v for k, v in manifest.filtered_counts.items()})
    return {
        "dataset": manifest.name,
        "samples": len(samples),
        "counts": by,
        "task_split": dict(Counter(f"{s.task}/{s.split}" for s in samples).most_common()),
        "answer_balance": {k: dict(v.most_common()) for k, v in balance.items()},
        "lengths": lengths,
        "rejected_by_reason": dict(rejected.most_common()),
        "masked": manifest.masked,
        "generation": {
            k: generation[k] for k in ("model", "counts", "rejected_by_reason") if k in generation
        },
        "mix": manifest.mix,
        "patient_split_ok": manifest.patient_split_ok,
    }


def _bars(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return ""
    top = max(counts.values()) or 1
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class=n>{v}</td>"
        f"<td><div class=bar style='width:{300 * v / top:.0f}px'></div></td></tr>"
        for k, v in counts.items()
    )
    return f"<h3>{html.escape(title)}</h3><table>{rows}</table>"


def render_html(stats: dict[str, Any]) -> str:
    """A self-contained page (no scripts, no external assets)."""
    parts = [f"<h1>Data quality: {html.escape(stats['dataset'])}</h1><p>{stats['samples']} samples; "
             f"patient-level split {'ok' if stats['patient_split_ok'] else 'VIOLATED'}</p>"]  # fmt: skip
    for name, counts in stats["counts"].items():
        parts.append(_bars(f"samples per {name}", counts))
    for task, counts in stats["answer_balance"].items():
        parts.append(_bars(f"answer balance: {task}", counts))
    for task, kinds in stats["lengths"].items():
        for kind, dist in kinds.items():
            summary = f" (median {dist['median']:.0f}, p90 {dist['p90']:.0f}, max {dist['max']})"
            parts.append(_bars(f"{task}: {kind.replace('_', ' ')}{summary}", dist["histogram"]))
    parts.append(_bars("rejected / filtered, by reason", stats["rejected_by_reason"]))
    parts.append(_bars("identifiers masked in free text, by kind", stats["masked"]))
    generation = stats["generation"]
    if generation:
        parts.append(_bars(f"LLM engine ({generation.get('model', '?')})", generation.get("counts", {})))
        parts.append(_bars("LLM engine rejections, by reason", generation.get("rejected_by_reason", {})))
    if stats["mix"]:
        parts.append(_bars("mix: records taken per source", {m["source"]: m["taken"] for m in stats["mix"]}))
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td{padding:2px 8px}"
        ".n{text-align:right}.bar{background:#3b7dd8;height:12px}"
    )
    head = f"<!doctype html><html><head><meta charset=utf-8><style>{style}</style></head>"
    return f"{head}<body>{''.join(parts)}</body></html>"


def write_report(directory: str | Path, samples: Sequence[Sample], manifest: Manifest) -> dict[str, Any]:
    """Write ``quality.json`` and ``quality.html`` into ``directory``; returns the stats."""
    stats = quality_stats(samples, manifest)
    directory = Path(directory)
    (directory / REPORT_JSON).write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    (directory / REPORT_HTML).write_text(render_html(stats), encoding="utf-8")
    return stats


def log_to_mlflow(uri: str, *, experiment: str = "eyeops-datasets") -> str:
    """Log a prepared dataset's quality report, manifest and samples to MLflow; returns the run id."""
    import mlflow

    from eyeops.data.store import MANIFEST, load_dataset, read_manifest

    # The registry's client, experiment placement (artifacts under the storage root) and errors.
    from eyeops.registry.mlflow_registry import client, experiment_id, mlflow_errors

    manifest = read_manifest(uri)
    frame, local = load_dataset(uri, as_frame=True)
    c = client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = local / REPORT_HTML
        if not report.is_file():  # a dataset prepared before reports existed
            write_report(folder, load_dataset(uri)[0], manifest)
        else:
            for name in (REPORT_HTML, REPORT_JSON):
                (folder / name).write_bytes((local / name).read_bytes())
        (folder / MANIFEST).write_bytes((local / MANIFEST).read_bytes())
        stats = json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
        with (
            mlflow_errors(f"logging dataset {manifest.name}"),
            mlflow.start_run(experiment_id=experiment_id(c, experiment), run_name=f"dataset {manifest.name}"),
        ):
            mlflow.set_tags(
                {"eyeops.dataset_name": manifest.name, "eyeops.dataset_fingerprint": manifest.fingerprint}
            )
            mlflow.log_metrics({"samples": stats["samples"], "quarantined": len(manifest.quarantine)})
            for name, value in (stats["generation"].get("counts") or {}).items():
                mlflow.log_metric(f"llm_{name}", value)
            mlflow.log_artifacts(str(folder), artifact_path="dataset")
            with warnings.catch_warnings():  # a local path matches MLflow's local source twice: same class
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                dataset = mlflow.data.from_pandas(
                    frame, source=str(uri), name=manifest.name, digest=manifest.fingerprint[:20]
                )
            mlflow.log_input(dataset, context="prepare")
            return mlflow.active_run().info.run_id  # type: ignore[union-attr]
