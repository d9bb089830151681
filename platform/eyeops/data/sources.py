"""What ``prepare`` reads: one source or a weighted mix, with image tasks derived by an engine.

- one source: an importer (or the generator / knowledge base / corpus pipeline) gives records;
- ``source: mix``: each ``data.mix`` entry is imported on its own, capped (``max_records``) and,
  when weighted, drawn without repetition so the entries' record counts follow their weights as
  far as the smallest allows; the records then share one de-identification and one split by
  patient (or dialogue / document), so no patient spans two splits across the sources;
- ``data.engine``: labelled image records become closed-QA / open-QA / report records through the
  template engine, or the LLM engine (generate + verify) with templates as fallback; corpus
  passages become MCQ / essay records only with the LLM engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from eyeops.data.importers import BENCHMARKS
from eyeops.data.records import ImageInput, ImportResult, RawRecord
from eyeops.data.schema import ODIR_LABELS, Modality, Task
from eyeops.errors import DataError

if TYPE_CHECKING:  # annotations only: eyeops.recipes imports eyeops.data (import cycle)
    from eyeops.data.llm_engine import Engine
    from eyeops.recipes import DataSpec, MixEntry

__all__ = ["ProgressHook", "import_source", "no_progress"]

# progress(description, total) -> advance(n): lets the CLI drive a rich progress bar.
ProgressHook = Callable[[str, int], Callable[[int], None]]
IMPORTERS = {
    "odir": "eyeops.data.importers.odir",
    "llava": "eyeops.data.importers.llava_json",
    "mcq": "eyeops.data.importers.mcq",
    "essay": "eyeops.data.importers.mcq",
    "alpaca": "eyeops.data.importers.alpaca_dialogue",
    "raw_dialogue": "eyeops.data.importers.raw_dialogue",
}
IMAGE_TASKS = {Task.CLOSED_QA, Task.OPEN_QA, Task.REPORT}


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n=1: None


def _synthetic(spec: DataSpec, progress: ProgressHook) -> ImportResult:
    from eyeops.data.synthetic import generate

    result = ImportResult(label_names=list(ODIR_LABELS))
    advance = progress("generating synthetic fundus images", spec.n)
    for item in generate(spec.n, seed=spec.seed, size=spec.image_size):
        ref = f"synthetic#{item.index}"
        result.records.append(
            RawRecord(
                key=f"{item.index:06d}-{item.eye}",
                task=Task.CLASSIFY,
                where=ref,
                images=(ImageInput(ref=ref, array=item.image),),
                patient=item.patient,
                eye=item.eye,
                modality=Modality.FUNDUS,
                labels=item.labels,
                findings=item.findings,
                source="synthetic",
                license="CC0-1.0 (generated)",
                meta={"findings": "; ".join(f.description for f in item.findings)},
            )
        )
        advance(1)
    return result


def _import_raw(spec: DataSpec, progress: ProgressHook, engine: Engine | None) -> ImportResult:
    """One source's records as imported, before any task is derived."""
    if spec.source == "synthetic":
        return _synthetic(spec, progress)
    if spec.source == "knowledge":
        from eyeops.data.engine import knowledge_records

        tasks = [t for t in spec.tasks if t in (Task.TEXT_QA, Task.MCQ)] or [Task.TEXT_QA, Task.MCQ]
        return ImportResult(records=knowledge_records(tasks, seed=spec.seed))
    if spec.source == "corpus":
        from eyeops.data import corpus

        return corpus.load(spec.path, spec=spec.corpus, tasks=spec.tasks, engine=engine, progress=progress)
    if spec.source in BENCHMARKS:
        return importlib.import_module(BENCHMARKS[spec.source]).load(
            spec.path, kind=spec.source, filter=spec.filter
        )
    if spec.source in IMPORTERS:
        return importlib.import_module(IMPORTERS[spec.source]).load(spec.path, kind=spec.source)
    if spec.source == "dataset":
        raise DataError(
            "source 'dataset' is already prepared: pass its DatasetRef to train directly", field="data.source"
        )
    raise DataError(f"unknown data source {spec.source!r}", field="data.source")  # pragma: no cover


def _derive(
    imported: ImportResult, spec: DataSpec, engine: Engine | None, progress: ProgressHook
) -> ImportResult:
    """Apply ``spec.tasks`` to labelled image records (classify → closed/open QA, report, generate_image)."""
    wanted = set(spec.tasks)
    derived = sorted(wanted & IMAGE_TASKS)
    rng = np.random.default_rng([spec.seed, 11])
    labelled = [r for r in imported.records if r.task == Task.CLASSIFY and r.labels]
    by_record: dict[int, list[RawRecord]] = {}
    if derived and engine is not None and labelled:
        advance = progress("LLM engine: generate + verify image QA / reports", len(labelled))
        items = engine.image_records(
            labelled, derived, label_names=imported.label_names, rng=rng, advance=advance
        )
        by_record = {id(r): out for r, out in zip(labelled, items, strict=True)}
    elif derived:
        from eyeops.data.engine import image_records

        by_record = {
            id(r): image_records(r, derived, rng=rng, label_names=imported.label_names) for r in labelled
        }
    out: list[RawRecord] = []
    for record in imported.records:
        if record.task != Task.CLASSIFY or not record.labels:
            out.append(record)
            continue
        if Task.CLASSIFY in wanted or not derived:
            out.append(record)
        out.extend(by_record.get(id(record), []))
        if Task.GENERATE_IMAGE in wanted:  # HealthGPT's generation tasks with target images
            from eyeops.data.image_pairs import generation_records

            out.extend(generation_records(record, label_names=imported.label_names))
    imported.records = out
    return imported


def _engine(spec: DataSpec) -> Engine | None:
    if spec.engine.kind != "llm":
        return None
    from eyeops.data.llm_client import LLMSession
    from eyeops.data.llm_engine import Engine

    return Engine(LLMSession(spec.engine))


def import_source(spec: DataSpec, progress: ProgressHook = no_progress) -> ImportResult:
    """Records (and importer-level rejects) for ``spec``, one source or a mix, tasks derived."""
    engine = _engine(spec)
    if spec.source == "mix":
        imported = _mix(spec, progress, engine)
    else:
        imported = _derive(_import_raw(spec, progress, engine), spec, engine, progress)
    if engine is not None:
        imported.generation = engine.report()
        imported.quarantine += engine.quarantine
    return imported


# --- mixing ---------------------------------------------------------------------------------------
def _takes(entries: list[MixEntry], available: list[int]) -> list[int]:
    """Records to take per entry: capped, and in proportion to the weights when they are given."""
    caps = [min(n, e.max_records or n) for e, n in zip(entries, available, strict=True)]
    if entries[0].weight is None:
        return caps
    total_weight = sum(e.weight or 0 for e in entries)
    shares = [(e.weight or 0) / total_weight for e in entries]
    scale = min(cap / share for cap, share in zip(caps, shares, strict=True))
    return [min(cap, int(share * scale + 1e-9)) for cap, share in zip(caps, shares, strict=True)]


def _mix(spec: DataSpec, progress: ProgressHook, engine: Engine | None) -> ImportResult:
    result = ImportResult()
    parts: list[tuple[MixEntry, DataSpec, ImportResult]] = []
    for entry in spec.mix:
        sub = spec.model_copy(
            update={
                "source": entry.source,
                "path": entry.path,
                "mix": [],
                "n": entry.n or spec.n,
                "tasks": entry.tasks or spec.tasks,
                "filter": entry.filter,
            }
        )
        parts.append((entry, sub, _import_raw(sub, progress, engine)))
    labels = {tuple(raw.label_names) for _, _, raw in parts if raw.label_names}
    if len(labels) > 1:
        raise DataError(f"data.mix: the sources' label sets differ ({sorted(labels)}); mix one label set")
    result.label_names = list(next(iter(labels), ()))
    takes = _takes([e for e, _, _ in parts], [len(raw.records) for _, _, raw in parts])
    repeated = {e.source for e, _, _ in parts if sum(o.source == e.source for o, _, _ in parts) > 1}
    for i, ((entry, sub, raw), take) in enumerate(zip(parts, takes, strict=True)):
        available = len(raw.records)
        if take < available:
            rng = np.random.default_rng([spec.seed, 17, i])
            raw.records = [raw.records[j] for j in sorted(rng.choice(available, size=take, replace=False))]
        raw.label_names = raw.label_names or result.label_names
        derived = _derive(raw, sub, engine, progress)
        if entry.source in repeated:  # two files of one importer: keep sample ids distinct
            derived.records = [replace(r, key=f"m{i}-{r.key}") for r in derived.records]
        result.records += derived.records
        result.quarantine += derived.quarantine
        result.filtered.update({f"{entry.source}: {k}": v for k, v in derived.filtered.items()})
        result.notes |= {f"{entry.source}: {k}": v for k, v in derived.notes.items()}
        result.masked.update(derived.masked)
        result.mix.append(
            {
                "source": entry.source,
                "path": entry.path.rstrip("/").rsplit("/", 1)[-1] if entry.path else None,
                "weight": entry.weight,
                "max_records": entry.max_records,
                "available": available,
                "taken": take,
                "records": len(derived.records),
                "rejected": len(derived.quarantine),
            }
        )
    return result
