"""eyeops.storage on local paths, file:// and s3:// against a real moto server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from eyeops import storage
from eyeops.config import get_settings
from eyeops.errors import ConfigError, NotFoundError
from eyeops.refs import DatasetRef

FILES = {"a.txt": "alpha", "sub/b.txt": "beta" * 1000, "sub/deeper/c.bin": "gamma"}


def _tree(root: Path, files: dict[str, str] = FILES) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _contents(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket on the moto server, with the settings pointed at it."""
    monkeypatch.setenv("EYEOPS_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    get_settings.cache_clear()
    name = f"eyeops-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return name


# --- URIs -----------------------------------------------------------------------------------------
def test_parse_local_file_and_s3(tmp_path):
    local = storage.parse(tmp_path / "x")
    assert not local.is_s3 and local.path == tmp_path / "x"
    assert storage.parse(f"file://{tmp_path}/x").path == tmp_path / "x"
    s3 = storage.parse("s3://bucket/some/prefix/")
    assert (s3.is_s3, s3.bucket, s3.key, s3.prefix) == (True, "bucket", "some/prefix", "some/prefix/")
    assert storage.parse("s3://bucket").prefix == ""
    assert storage.join("s3://b/p/", "manifest.json") == "s3://b/p/manifest.json"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty storage URI"),
        ("s3://", r"'s3://': no valid bucket name"),
        ("s3:///key", r"'s3:///key': no valid bucket name"),
        ("gs://bucket/key", r"'gs://bucket/key': only local paths, file:// and s3://"),
        ("http://host/x", r"'http://host/x': only local paths"),
    ],
)
def test_bad_uris_name_themselves(uri, message):
    with pytest.raises(ConfigError, match=message):
        storage.parse(uri)
    with pytest.raises(ConfigError, match=message):
        storage.local_copy(uri)


def test_a_bucket_is_not_an_object(bucket):
    with pytest.raises(ConfigError, match=rf"'s3://{bucket}' names a bucket, not an object"):
        storage.read_text(f"s3://{bucket}")


# --- small documents ------------------------------------------------------------------------------
def test_text_and_refs_on_local_paths_and_file_uris(tmp_path):
    target = tmp_path / "deep" / "ref.json"
    ref = DatasetRef(uri="s3://b/d", fingerprint="f" * 64, name="d", num_samples=3)
    storage.write_ref(target, ref)
    assert storage.read_ref(f"file://{target}", DatasetRef) == ref
    assert [p.name for p in target.parent.iterdir()] == ["ref.json"]  # no temp file left behind
    storage.write_text(target, "{}")  # replaced, not appended
    with pytest.raises(ConfigError, match=r"ref\.json: not a valid DatasetRef \(uri: Field required\)"):
        storage.read_ref(target, DatasetRef)
    with pytest.raises(NotFoundError, match=r"missing\.json does not exist"):
        storage.read_text(tmp_path / "missing.json")


def test_text_and_refs_on_s3(bucket):
    uri = f"s3://{bucket}/runs/r1/checkpoint_ref.json"
    ref = DatasetRef(uri="/d", fingerprint="f")
    storage.write_ref(uri, ref)
    assert storage.read_ref(uri, DatasetRef) == ref
    with pytest.raises(NotFoundError, match=rf"s3://{bucket}/runs/r2/x\.json does not exist"):
        storage.read_text(f"s3://{bucket}/runs/r2/x.json")
    with pytest.raises(NotFoundError, match=r"s3://no-such-bucket-here/x\.json does not exist"):
        storage.read_text("s3://no-such-bucket-here/x.json")


def test_one_client_per_settings(bucket, monkeypatch):
    assert storage.s3_client() is storage.s3_client()
    monkeypatch.setenv("EYEOPS_S3_REGION", "eu-west-1")
    get_settings.cache_clear()
    assert storage.s3_client().meta.region_name == "eu-west-1"


# --- directories ----------------------------------------------------------------------------------
def test_local_copy_returns_local_directories_as_they_are(tmp_path):
    root = _tree(tmp_path / "model")
    assert storage.local_copy(root) == root
    assert storage.local_copy(f"file://{root}") == root
    with pytest.raises(NotFoundError, match=r"nothing-here: no such directory"):
        storage.local_copy(tmp_path / "nothing-here")


def test_publish_dir_locally_copies_and_replaces(tmp_path):
    src = _tree(tmp_path / "src")
    dest = tmp_path / "out" / "model"
    storage.publish_dir(src, dest)
    assert _contents(dest) == FILES
    _tree(tmp_path / "src2", {"only.txt": "new"})
    storage.publish_dir(tmp_path / "src2", f"file://{dest}")
    assert _contents(dest) == {"only.txt": "new"}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # no staging left behind
    storage.publish_dir(dest, dest)  # onto itself: nothing to do
    assert _contents(dest) == {"only.txt": "new"}


def test_publish_to_s3_then_local_copy_is_cached_by_uri_and_fingerprint(bucket, tmp_path):
    uri = f"s3://{bucket}/models/m1"
    storage.publish_dir(_tree(tmp_path / "src"), uri, last="a.txt")
    first = storage.local_copy(uri, fingerprint="v1")
    assert _contents(first) == FILES
    assert first.is_relative_to(Path(os.environ["EYEOPS_STORAGE_ROOT"]))

    client = storage.s3_client()
    for key in (f"models/m1/{rel}" for rel in FILES):
        client.delete_object(Bucket=bucket, Key=key)
    assert storage.local_copy(uri, fingerprint="v1") == first  # served from the cache
    with pytest.raises(NotFoundError, match=rf"s3://{bucket}/models/m1: no objects under that prefix"):
        storage.local_copy(uri, fingerprint="v2")  # new content at the same URI: a new download


def test_named_files_and_a_rejecting_finish_leave_no_cache_entry(bucket, tmp_path):
    uri = f"s3://{bucket}/data/d1"
    storage.publish_dir(_tree(tmp_path / "src"), uri)
    with pytest.raises(NotFoundError, match=rf"s3://{bucket}/data/d1/absent\.txt does not exist"):
        storage.local_copy(uri, files=["a.txt", "absent.txt"])

    def reject(staging: Path) -> None:
        raise ValueError(f"bad copy in {staging.name}")

    with pytest.raises(ValueError, match="bad copy"):
        storage.local_copy(uri, files=["a.txt"], finish=reject)
    cache = storage.cache_dir("downloads")
    assert [p for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    only_a = storage.local_copy(uri, files=["a.txt"])
    assert _contents(only_a) == {"a.txt": "alpha"}


def test_concurrent_threads_download_once_and_all_see_complete_data(bucket, tmp_path):
    uri = f"s3://{bucket}/models/shared"
    storage.publish_dir(_tree(tmp_path / "src"), uri)
    finished: list[str] = []
    results: list[Path] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        results.append(storage.local_copy(uri, finish=lambda staging: finished.append(staging.name)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and len(set(results)) == 1
    assert len(finished) == 1  # one download; the other seven waited and reused it
    assert _contents(results[0]) == FILES


_CHILD = """
import hashlib, sys, time
from pathlib import Path
from eyeops import storage
go, uri, counter = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
def count(staging):
    with open(counter, "a") as fh:
        fh.write("download\\n")
root = storage.local_copy(uri, finish=count)
digest = hashlib.sha256()
for p in sorted(q for q in root.rglob("*") if q.is_file()):
    digest.update(p.relative_to(root).as_posix().encode() + b"\\0" + p.read_bytes())
print(root, digest.hexdigest())
"""


def test_concurrent_processes_download_once_and_all_see_complete_data(bucket, tmp_path):
    uri = f"s3://{bucket}/models/pods"
    src = _tree(tmp_path / "src")
    storage.publish_dir(src, uri)
    digest = hashlib.sha256()
    for rel in sorted(FILES):
        digest.update(rel.encode() + b"\0" + (src / rel).read_bytes())
    go, counter = tmp_path / "go", tmp_path / "downloads.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(go), uri, str(counter)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outputs]
    lines = {out.strip() for out, _ in outputs}
    assert len(lines) == 1  # the same cache directory, with the same complete content
    assert lines.pop().endswith(digest.hexdigest())
    assert counter.read_text().count("download") == 1
