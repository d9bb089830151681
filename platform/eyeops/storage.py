"""One storage layer for every stage: local paths, ``file://`` and ``s3://bucket/key`` URIs.

- :func:`parse` turns a URI into a :class:`Location`, or a :class:`ConfigError` naming it;
- :func:`s3_client` is the one boto3 client (endpoint, region and credential env vars from
  :class:`PlatformSettings`), built once per process and settings;
- :func:`local_copy` gives a local directory for any URI: local paths as they are, S3 prefixes
  downloaded once into a cache. :func:`fill_once` is that cache: a staging directory renamed into
  place under a file lock, so concurrent threads, Ray workers and pods download once and never
  see half a copy. The registry fills it from MLflow with the same function;
- :func:`publish_dir` uploads a directory (one chosen file last) or copies it locally;
- :func:`read_text` / :func:`write_text` and :func:`read_ref` / :func:`write_ref` carry the small
  JSON documents (``eyeops.refs``) that stages and pods hand each other.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from eyeops.config import get_settings
from eyeops.errors import ConfigError, NotFoundError, StorageError

__all__ = [
    "Location",
    "arrow_s3_filesystem",
    "cache_dir",
    "decode_ref",
    "file_lock",
    "fill_once",
    "is_s3",
    "join",
    "local_copy",
    "parse",
    "publish_dir",
    "read_ref",
    "read_text",
    "s3_client",
    "write_ref",
    "write_text",
]

RefT = TypeVar("RefT", bound=BaseModel)
_MISSING = ("NoSuchKey", "NoSuchBucket", "404")  # S3 error codes that mean "not there"
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_WORKERS = 8  # parallel object transfers


# --- URIs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A parsed URI: ``bucket`` and ``key`` (no surrounding slashes) on S3, else a local ``path``."""

    uri: str
    bucket: str | None = None
    key: str = ""
    path: Path | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def prefix(self) -> str:
        """The key as a directory prefix (``key/``; empty for a whole bucket)."""
        return f"{self.key}/" if self.key else ""


def parse(uri: str | Path) -> Location:
    """A :class:`Location` for a local path, ``file://`` or ``s3://bucket/key`` URI."""
    text = str(uri)
    if not text.strip():
        raise ConfigError("empty storage URI: expected a local path, file:// or s3://bucket/key")
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not _BUCKET.match(bucket):
            raise ConfigError(f"{text!r}: no valid bucket name in s3 URI (expected s3://bucket/key)")
        return Location(text, bucket=bucket, key=key.strip("/"))
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(f"{text!r}: only local paths, file:// and s3:// URIs are supported")
    return Location(text, path=Path(text.removeprefix("file://")).expanduser())


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str | Path, *parts: str) -> str:
    """``uri`` with ``/``-separated ``parts`` appended (the same rule for paths and URIs)."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def _object_key(loc: Location) -> str:
    if not loc.key:
        raise ConfigError(f"{loc.uri!r} names a bucket, not an object (expected s3://bucket/key)")
    return loc.key


def _relative(rel: str, where: str) -> str:
    """A relative path that stays inside the directory it is joined to."""
    parts = PurePosixPath(rel).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise StorageError(f"{where}: {rel!r} is not a relative path inside the directory")
    return rel


# --- S3 -------------------------------------------------------------------------------------------
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def s3_client() -> Any:
    """The boto3 S3 client for the current settings, built once per process.

    Credentials come from the env vars the settings name; without them boto3's own chain
    (IRSA, instance profile) applies. Clients are not shared across a fork, hence the pid.
    """
    kwargs = get_settings().s3_client_kwargs()
    key = (os.getpid(), *sorted(kwargs.items()))
    with _clients_lock:
        if key not in _clients:
            import boto3

            _clients[key] = boto3.session.Session().client("s3", **kwargs)
        return _clients[key]


def arrow_s3_filesystem() -> Any:
    """A ``pyarrow.fs.S3FileSystem`` reaching the same endpoint as :func:`s3_client` (for Ray Train)."""
    import pyarrow.fs

    kwargs = get_settings().s3_client_kwargs()
    return pyarrow.fs.S3FileSystem(
        access_key=kwargs.get("aws_access_key_id"),
        secret_key=kwargs.get("aws_secret_access_key"),
        region=kwargs["region_name"],
        endpoint_override=kwargs.get("endpoint_url"),
    )


@contextmanager
def _s3_errors(what: str, uri: str) -> Iterator[None]:
    """botocore/boto3 failures as our errors: a missing key or bucket is NotFoundError."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _MISSING:
            raise NotFoundError(f"{uri} does not exist") from None
        raise StorageError(f"{what} {uri} failed: {exc}") from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"{what} {uri} failed: {exc}") from exc


# --- small documents ------------------------------------------------------------------------------
def read_text(uri: str | Path) -> str:
    """The UTF-8 text of one file or object."""
    loc = parse(uri)
    try:
        if loc.is_s3:
            with _s3_errors("reading", loc.uri):
                body = s3_client().get_object(Bucket=loc.bucket, Key=_object_key(loc))["Body"].read()
            return body.decode("utf-8")
        assert loc.path is not None
        if not loc.path.is_file():
            raise NotFoundError(f"{loc.uri} does not exist")
        return loc.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read {loc.uri}: {exc}") from exc


def write_text(uri: str | Path, text: str) -> None:
    """Write one file or object; a local file is replaced atomically (readers see old or new)."""
    loc = parse(uri)
    if loc.is_s3:
        with _s3_errors("writing", loc.uri):
            s3_client().put_object(Bucket=loc.bucket, Key=_object_key(loc), Body=text.encode("utf-8"))
        return
    assert loc.path is not None
    try:
        loc.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{loc.path.name}-", dir=loc.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, loc.path)
    except OSError as exc:
        raise StorageError(f"cannot write {loc.uri}: {exc}") from exc


def decode_ref(text: str, cls: type[RefT], what: str) -> RefT:
    """A ref (``eyeops.refs``) from its JSON; ``what`` names the input in the error."""
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"{what}: not a valid {cls.__name__} ({'.'.join(map(str, err['loc']))}: {err['msg']})"
        ) from None


def read_ref(uri: str | Path, cls: type[RefT], what: str | None = None) -> RefT:
    return decode_ref(read_text(uri), cls, what or str(uri))


def write_ref(uri: str | Path, ref: BaseModel) -> None:
    write_text(uri, ref.model_dump_json(indent=2))


# --- directories: the download cache --------------------------------------------------------------
def cache_dir(kind: str) -> Path:
    """``<storage_root>/cache/<kind>``, or ``~/.cache/eyeops/<kind>`` when the storage root is on S3."""
    settings = get_settings()
    if settings.is_local_storage:
        return Path(settings.storage_root) / "cache" / kind
    return Path.home() / ".cache" / "eyeops" / kind


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``, across threads and processes on one filesystem."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fill_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """``target``, written by ``fill(staging_dir)`` once across threads and processes.

    The first caller fills a staging sibling and renames it to ``target``; the others wait on the
    lock and reuse it. A directory at ``target`` therefore always holds a complete copy, and a
    failed ``fill`` leaves nothing behind.
    """
    if target.is_dir():
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            fill(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def local_copy(
    uri: str | Path,
    *,
    fingerprint: str | None = None,
    files: Sequence[str] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """A local directory holding the directory at ``uri``.

    Local paths and ``file://`` URIs are returned as they are. An S3 prefix is downloaded once into
    ``cache_dir('downloads')``, keyed by the URI and ``fingerprint`` (new content at the same URI
    is a new copy when the caller knows its fingerprint): every object under the prefix, or only
    ``files`` (relative paths; then no list permission is needed). ``finish(staging)`` runs on the
    download before it enters the cache: verify it, add files; what it rejects is never cached.
    """
    loc = parse(uri)
    if not loc.is_s3:
        assert loc.path is not None
        if not loc.path.is_dir():
            raise NotFoundError(f"{loc.uri}: no such directory")
        return loc.path
    name = hashlib.sha256(f"s3://{loc.bucket}/{loc.key}\0{fingerprint or ''}".encode()).hexdigest()[:32]

    def fill(staging: Path) -> None:
        _download(loc, staging, files)
        if finish is not None:
            finish(staging)

    target = cache_dir("downloads") / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return fill_once(target, fill)


def _download(loc: Location, dest: Path, files: Sequence[str] | None) -> None:
    client = s3_client()
    if files is None:
        with _s3_errors("listing", loc.uri):
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.prefix)
            keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
        files = [key[len(loc.prefix) :] for key in keys if not key.endswith("/")]
        if not files:
            raise NotFoundError(f"{loc.uri}: no objects under that prefix")

    def fetch(rel: str) -> None:
        key = loc.prefix + _relative(rel, loc.uri)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors("downloading", f"s3://{loc.bucket}/{key}"):
            client.download_file(loc.bucket, key, str(dest / rel))

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(fetch, files))


# --- directories: publishing ----------------------------------------------------------------------
def publish_dir(local_dir: str | Path, uri: str | Path, *, last: str | None = None) -> None:
    """Put every file under ``local_dir`` at ``uri``.

    To S3 the files are uploaded in parallel and ``last`` (a relative path) after all others, so a
    reader that looks for it first sees a complete directory. A local destination is written as a
    staging sibling and renamed into place (replacing what was there); onto itself it is a no-op.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such directory to publish")
    loc = parse(uri)
    if not loc.is_s3:
        assert loc.path is not None
        _copy_dir(root, loc.path)
        return
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    client = s3_client()

    def put(rel: str) -> None:
        key = loc.prefix + rel
        with _s3_errors("uploading to", f"s3://{loc.bucket}/{key}"):
            client.upload_file(str(root / rel), loc.bucket, key)

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(put, [rel for rel in rels if rel != last]))
    if last is not None and last in rels:
        put(last)


def _copy_dir(root: Path, dest: Path) -> None:
    dest = dest.resolve()
    if dest == root.resolve():
        return
    if dest.exists() and not dest.is_dir():
        raise StorageError(f"{dest} exists and is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(root, staging, dirs_exist_ok=True)
        if dest.exists():  # move the old copy aside: readers miss a directory for one rename only
            old = staging.with_name(staging.name + "-old")
            dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old)
        else:
            staging.rename(dest)
    except OSError as exc:
        raise StorageError(f"cannot copy {root} to {dest}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
