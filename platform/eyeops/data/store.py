"""Dataset storage: ``samples.parquet`` + ``images/`` + ``manifest.json``, on disk or on S3.

A dataset is always assembled in a local directory first; :func:`publish` then finalises the
manifest (sha256 of every file, fingerprint) and, for ``s3://`` destinations, uploads it with the
manifest last, so a reader never sees a manifest whose files are not all there. Readers verify
the files they download against the manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from eyeops import storage
from eyeops.data.schema import FileEntry, Manifest, Message, Sample
from eyeops.errors import DataError, NotFoundError, StorageError
from eyeops.storage import is_s3

__all__ = [
    "MANIFEST",
    "PARQUET",
    "PARQUET_SCHEMA",
    "fingerprint_files",
    "is_s3",
    "load_dataset",
    "load_samples",
    "publish",
    "read_manifest",
    "samples_to_table",
    "sha256_file",
    "table_to_samples",
    "write_samples",
]

PARQUET = "samples.parquet"
MANIFEST = "manifest.json"
# meta is a JSON string column so pandas readers get plain strings, not lists of key/value tuples.
PARQUET_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("patient_id", pa.string()),
        ("eye", pa.string()),
        ("modality", pa.string()),
        ("images", pa.list_(pa.string())),
        ("target_image", pa.string()),
        ("task", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("answer", pa.string()),
        ("options", pa.list_(pa.string())),
        ("labels", pa.list_(pa.int8())),
        ("source", pa.string()),
        ("license", pa.string()),
        ("split", pa.string()),
        ("meta", pa.string()),
    ]
)

# Columns added after datasets were first written: an older table without them still reads.
_OPTIONAL_COLUMNS = frozenset({"target_image"})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_files(files: Sequence[FileEntry]) -> str:
    """sha256 over the sorted ``path:sha256`` lines: equal content ⇔ equal fingerprint."""
    lines = sorted(f"{f.path}:{f.sha256}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- Parquet <-> Sample ---------------------------------------------------------------------------
def samples_to_table(samples: Sequence[Sample]) -> pa.Table:
    rows = []
    for s in samples:
        row = s.model_dump(mode="json")
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False, sort_keys=True)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)


def table_to_samples(table: pa.Table, origin: str = PARQUET) -> list[Sample]:
    missing = [
        name
        for name in PARQUET_SCHEMA.names
        if name not in table.column_names and name not in _OPTIONAL_COLUMNS
    ]
    if missing:
        raise DataError(f"not an eyeops samples table: missing columns {missing}", file=origin)
    out = []
    for i, row in enumerate(table.to_pylist()):
        row["meta"] = json.loads(row["meta"] or "{}")
        row["messages"] = [Message(**m) for m in row["messages"] or []]
        try:
            out.append(Sample.model_validate(row))
        except ValueError as exc:
            raise DataError(f"invalid sample: {exc}", file=origin, row=i) from None
    return out


def write_samples(samples: Sequence[Sample], directory: str | Path) -> Path:
    path = Path(directory) / PARQUET
    pq.write_table(samples_to_table(samples), path, compression="zstd")
    return path


# --- publish -----------------------------------------------------------------------------------------
def publish(local_dir: str | Path, manifest: Manifest, dest: str | None = None) -> Manifest:
    """Hash every file under ``local_dir``, write ``manifest.json``, upload to ``dest`` if s3://."""
    root = Path(local_dir)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(root).as_posix()
        entries.append(FileEntry(path=rel, sha256=sha256_file(path), bytes=path.stat().st_size))
    manifest = manifest.model_copy(update={"files": entries, "fingerprint": fingerprint_files(entries)})
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    if dest and is_s3(dest):
        storage.publish_dir(root, dest, last=MANIFEST)  # manifest last: it marks completeness
    return manifest


# --- read ---------------------------------------------------------------------------------------------
def read_manifest(uri: str | Path) -> Manifest:
    """The manifest of a dataset at a local path, ``file://`` or ``s3://`` URI."""
    where = storage.join(uri, MANIFEST)
    try:
        text = storage.read_text(where)
    except NotFoundError:
        raise NotFoundError(f"no dataset at {uri} (no {MANIFEST})") from None
    try:
        return Manifest.model_validate_json(text)
    except ValueError as exc:
        raise DataError(f"invalid manifest: {exc}", file=where) from None


def _verify(uri: str, manifest: Manifest, root: Path) -> None:
    """Every downloaded file matches its manifest hash; then the manifest itself goes in."""
    for entry in manifest.files:
        if sha256_file(root / entry.path) != entry.sha256:
            raise StorageError(f"{uri}/{entry.path}: sha256 does not match the manifest")
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")


def local_dataset_dir(uri: str | Path) -> Path:
    """A local directory holding the dataset (downloaded and verified once when on S3)."""
    uri = str(uri)
    manifest = read_manifest(uri)
    return storage.local_copy(
        uri,
        fingerprint=manifest.fingerprint,
        files=[entry.path for entry in manifest.files],
        finish=partial(_verify, uri, manifest),
    ).resolve()


def load_samples(uri: str | Path, split: str | None = None) -> list[Sample]:
    """Every sample of a dataset (optionally one split), validated against the schema."""
    local = local_dataset_dir(uri)
    path = local / PARQUET
    if not path.is_file():
        raise NotFoundError(f"dataset {uri} has no {PARQUET}")
    filters: Any = [("split", "=", split)] if split else None
    return table_to_samples(pq.read_table(path, filters=filters), origin=str(path))


def load_dataset(uri: str | Path, *, as_frame: bool = False):
    """``(samples, local_dir)``: samples as ``list[Sample]`` or a pandas DataFrame."""
    local = local_dataset_dir(uri)
    if as_frame:
        return pq.read_table(local / PARQUET).to_pandas(), local
    return load_samples(local), local
