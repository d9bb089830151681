"""Dataset storage: ``samples.parquet`` + ``images/`` + ``manifest.json``, on disk or on S3.

A dataset is always assembled in a local directory first; :func:`publish` then finalises the
manifest (sha256 of every file, fingerprint) and, for ``s3://`` destinations, uploads it with the
manifest last, so a reader never sees a manifest whose files are not all there. Readers verify
the files they download against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from eyeops.config import get_settings
from eyeops.data.schema import FileEntry, Manifest, Message, Sample
from eyeops.errors import DataError, NotFoundError, StorageError

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


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: no bucket in s3 URI")
    return bucket, prefix.strip("/")


def _s3_client():
    import boto3

    return boto3.client("s3", **get_settings().s3_client_kwargs())


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
    missing = [name for name in PARQUET_SCHEMA.names if name not in table.column_names]
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
        _upload(root, dest, [e.path for e in entries])
    return manifest


def _upload(root: Path, dest: str, rel_paths: Sequence[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = _split_s3(dest)
    client = _s3_client()

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda rel: client.upload_file(str(root / rel), bucket, key(rel)), rel_paths))
        client.upload_file(str(root / MANIFEST), bucket, key(MANIFEST))  # last: marks completeness
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"upload to {dest} failed: {exc}") from exc


# --- read ---------------------------------------------------------------------------------------------
def read_manifest(uri: str | Path) -> Manifest:
    """The manifest of a dataset at a local path, ``file://`` or ``s3://`` URI."""
    uri = str(uri)
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = _split_s3(uri)
        try:
            key = f"{prefix}/{MANIFEST}".lstrip("/")
            body = _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                raise NotFoundError(f"no dataset at {uri} (no {MANIFEST})") from None
            raise StorageError(f"reading {uri}/{MANIFEST} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"reading {uri}/{MANIFEST} failed: {exc}") from exc
        text = body.decode("utf-8")
    else:
        path = Path(uri.removeprefix("file://")) / MANIFEST
        if not path.is_file():
            raise NotFoundError(f"no dataset at {uri} (no {MANIFEST})")
        text = path.read_text(encoding="utf-8")
    try:
        return Manifest.model_validate_json(text)
    except ValueError as exc:
        raise DataError(f"invalid manifest: {exc}", file=f"{uri}/{MANIFEST}") from None


def _cache_root() -> Path:
    settings = get_settings()
    if settings.is_local_storage:
        return Path(settings.storage_root) / "cache" / "datasets"
    return Path.home() / ".cache" / "eyeops" / "datasets"


def _download(uri: str, manifest: Manifest) -> Path:
    """Fetch an s3 dataset into the local cache (keyed by fingerprint), verifying every file."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import BotoCoreError, ClientError

    target = _cache_root() / manifest.fingerprint
    if (target / MANIFEST).is_file():
        return target
    bucket, prefix = _split_s3(uri)
    client = _s3_client()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    def fetch(entry: FileEntry) -> None:
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/{entry.path}".lstrip("/"), str(dest))
        if sha256_file(dest) != entry.sha256:
            raise StorageError(f"{uri}/{entry.path}: sha256 does not match the manifest")

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fetch, manifest.files))
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"downloading {uri} failed: {exc}") from exc
    (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def local_dataset_dir(uri: str | Path) -> Path:
    """A local directory holding the dataset (downloaded to the cache first when on S3)."""
    uri = str(uri)
    manifest = read_manifest(uri)
    if is_s3(uri):
        return _download(uri, manifest)
    return Path(uri.removeprefix("file://")).resolve()


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
