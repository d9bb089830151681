"""The ``prepare`` stage: a :class:`~eyeops.recipes.DataSpec` in, a stored dataset + ``DatasetRef`` out.

source (or a mix: ``eyeops.data.sources``) → RawRecords → (engine: derived closed-QA / open-QA /
report samples, template or LLM) → image ingest (decode, strip, hash, store) → quarantine →
exact-dedup → de-identify → split by patient → ``samples.parquet`` + ``images/`` +
``quality.html`` / ``quality.json`` (``eyeops.data.report``) + ``manifest.json`` (local or s3://).

``spec.tasks`` chooses what is *derived*: for labelled image sources (synthetic, odir) any of
classify / closed_qa / open_qa / report / generate_image (``image_pairs``: one sample per generation
task, each with its target image); for the knowledge base text_qa / mcq (both if neither is
asked); for a corpus pretrain_text / mcq / text_qa. Sources that carry their own task (llava, mcq,
essay, alpaca, raw_dialogue) keep it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from eyeops.data.importers import BENCHMARKS
from eyeops.data.quality import (
    check_patient_split,
    deidentify,
    find_near_duplicates,
    ingest_images,
    resolve_salt,
    split_groups,
)
from eyeops.data.records import RawRecord
from eyeops.data.report import REPORT_HTML, REPORT_JSON, write_report
from eyeops.data.schema import Manifest, QuarantineEntry, Sample, Split
from eyeops.data.sources import ProgressHook, import_source, no_progress
from eyeops.data.store import MANIFEST, is_s3, publish, write_samples
from eyeops.errors import DataError, StorageError
from eyeops.refs import DatasetRef

if TYPE_CHECKING:  # annotations only: eyeops.recipes imports eyeops.data (import cycle)
    from eyeops.recipes import DataSpec

__all__ = ["ProgressHook", "import_source", "prepare"]


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0].strip()


def _rarest_label(labels_by_group: dict[str, set[int]], freq: Counter) -> dict[str, str]:
    strata = {}
    for group, labels in labels_by_group.items():
        strata[group] = f"label{min(labels, key=lambda i: (freq[i], i))}" if labels else "none"
    return strata


def prepare(
    spec: DataSpec,
    out: str,
    *,
    name: str,
    image_format: str = "png",
    workers: int | None = None,
    progress: ProgressHook | None = None,
) -> DatasetRef:
    """Build a dataset from ``spec`` at ``out`` (local dir or s3:// URI) and return its reference.

    Rejected records are quarantined and reported in the manifest; :class:`DataError` only when
    nothing usable remains.
    """
    progress = progress or no_progress
    imported = import_source(spec, progress)
    quarantine: list[QuarantineEntry] = list(imported.quarantine)
    records = imported.records
    if not records:
        left_out = sum(imported.filtered.values())
        note = f"; the filter {_applied_filter(spec)} left out {left_out} row(s)" if left_out else ""
        raise DataError(_nothing_left(spec, quarantine) + note)

    remote = is_s3(out)
    staging = Path(tempfile.mkdtemp(prefix="eyeops-prepare-")) if remote else _local_target(out)
    try:
        inputs = [im for r in records for im in (*r.images, r.target) if im is not None]
        distinct = len({im.key for im in inputs})
        advance = progress("decoding and storing images", distinct) if distinct else (lambda n=1: None)
        results = ingest_images(
            inputs,
            out_dir=staging,
            size=spec.image_size,
            fmt=image_format,
            workers=workers,
            progress=lambda: advance(1),
        )
        for res in results.values():
            if not res.ok:
                quarantine.append(QuarantineEntry(path=res.ref, reason=res.reason or "unreadable"))

        salt, deid = resolve_salt()
        kept: list[tuple[RawRecord, list[str], str | None, str]] = []  # record, images, target, split group
        seen: dict[tuple, str] = {}
        duplicates = 0
        for record in records:
            images = [results[im.key] for im in record.images]
            target = results[record.target.key] if record.target else None
            bad = next((im for im in (*images, target) if im is not None and not im.ok), None)
            if bad is not None:
                quarantine.append(QuarantineEntry(path=record.where, reason=f"image {bad.ref}: {bad.reason}"))
                continue
            sid = f"{record.source}-{record.key}"
            ident = (
                record.task,
                tuple(im.pixel_hash for im in images),
                target.pixel_hash if target else None,
                record.messages,
                record.answer,
                record.options,
            )
            if ident in seen:
                duplicates += 1
                quarantine.append(
                    QuarantineEntry(
                        path=record.where, reason=f"exact duplicate of {seen[ident]}", sample_id=sid
                    )
                )
                continue
            seen[ident] = sid
            group = record.patient or (images[0].pixel_hash if images else None) or record.group or sid
            target_path = (target.rel_path or "") if target else None
            kept.append((record, [im.rel_path or "" for im in images], target_path, group))
        if not kept:
            raise DataError(_nothing_left(spec, quarantine))

        freq: Counter = Counter()
        labels_by_group: dict[str, set[int]] = {}
        for record, _, _, group in kept:
            positives = {i for i, v in enumerate(record.labels) if v}
            freq.update(positives)
            labels_by_group.setdefault(group, set()).update(positives)
        if spec.role == "benchmark":  # evaluation-only: the whole source, never re-split
            splits = {group: Split.TEST for group in labels_by_group}
        else:
            splits = split_groups(
                _rarest_label(labels_by_group, freq),
                val_fraction=spec.val_fraction,
                test_fraction=spec.test_fraction,
                seed=spec.seed,
            )

        samples = []
        for record, paths, target_path, group in kept:
            samples.append(
                Sample(
                    id=f"{record.source}-{record.key}",
                    patient_id=deidentify(record.patient, salt) if record.patient else None,
                    eye=record.eye,
                    modality=record.modality,
                    images=paths,
                    target_image=target_path,
                    task=record.task,
                    messages=list(record.messages),
                    answer=record.answer,
                    options=list(record.options),
                    labels=list(record.labels),
                    source=record.source,
                    license=record.license,
                    split=splits[group],
                    meta=record.meta,
                )
            )
        ok, offenders = check_patient_split([(s.patient_id, s.split) for s in samples])
        if not ok:  # cannot happen with group-level assignment; refuse to write a leaking dataset
            raise DataError(f"patient-level split violated for {len(offenders)} patient(s)")
        used = {p for s in samples for p in (*s.images, s.target_image) if p is not None}
        for orphan in (staging / "images").glob("*"):  # images only quarantined/duplicate records used
            if f"images/{orphan.name}" not in used:
                orphan.unlink()
        phashes = {res.rel_path: res.phash for res in results.values() if res.ok and res.rel_path in used}

        counts = Counter(f"{s.task}/{s.modality}/{s.split}" for s in samples)
        patients: dict[str, set[str]] = {}
        for s in samples:
            if s.patient_id:
                patients.setdefault(str(s.split), set()).add(s.patient_id)
        write_samples(samples, staging)
        for entry in imported.mix:  # the mix as stored: samples per split of each source
            entry["samples"] = dict(Counter(str(s.split) for s in samples if s.source == entry["source"]))
        manifest = Manifest(
            name=name,
            label_names=imported.label_names,
            counts=dict(sorted(counts.items())),
            quarantine=quarantine,
            quarantine_counts=dict(Counter(_reason_kind(q.reason) for q in quarantine)),
            near_duplicates=find_near_duplicates(phashes),
            patient_split_ok=ok,
            sources=sorted({s.source for s in samples}),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            image_format=image_format,
            image_size=spec.image_size,
            deid=deid,
            patients_per_split={k: len(v) for k, v in sorted(patients.items())},
            duplicates_dropped=duplicates,
            spec=spec.model_dump(mode="json", exclude={"path": True, "mix": {"__all__": {"path"}}}),
            benchmark=spec.source if spec.role == "benchmark" else None,
            filter=_applied_filter(spec),
            import_counts=imported.counts(),
            filtered_counts=dict(imported.filtered.most_common()),
            import_notes=imported.notes,
            masked=dict(imported.masked.most_common()),
            generation=imported.generation,
            mix=imported.mix,
        )
        write_report(staging, samples, manifest)
        manifest = publish(staging, manifest, dest=out if remote else None)
    finally:
        if remote:
            shutil.rmtree(staging, ignore_errors=True)
    uri = out if remote else str(staging)
    return DatasetRef(uri=uri, fingerprint=manifest.fingerprint, name=name, num_samples=len(samples))


def _applied_filter(spec: DataSpec) -> list[str]:
    if spec.filter is not None or spec.source not in BENCHMARKS:
        return list(spec.filter or [])
    return list(getattr(importlib.import_module(BENCHMARKS[spec.source]), "DEFAULT_FILTER", []))


def _local_target(out: str) -> Path:
    """The output directory, emptied of a previous dataset; refuses to clobber anything else."""
    path = Path(out.removeprefix("file://")).expanduser().resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MANIFEST).is_file():
            raise StorageError(f"{path} is not empty and holds no eyeops dataset; refusing to overwrite it")
        for child in ("images", "samples.parquet", REPORT_HTML, REPORT_JSON, MANIFEST):
            target = path / child
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _nothing_left(spec: DataSpec, quarantine: list[QuarantineEntry]) -> str:
    reasons = Counter(_reason_kind(q.reason) for q in quarantine)
    detail = ", ".join(f"{n}× {r}" for r, n in reasons.most_common(5)) or "the source is empty"
    first = f"; first: {quarantine[0].path}: {quarantine[0].reason}" if quarantine else ""
    return (
        f"nothing usable in source {spec.source!r}{f' ({spec.path})' if spec.path else ''}: {detail}{first}"
    )
