"""Read and write small JSON documents (stage refs) at a local path, ``file://`` or ``s3://`` URI.

A RayJob pod and the KFP task that waits for it share nothing but object storage, so the
entrypoint writes its ``CheckpointRef`` here and the task reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from eyeops.config import get_settings
from eyeops.errors import NotFoundError, StorageError

RefT = TypeVar("RefT", bound=BaseModel)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def _s3():
    import boto3

    return boto3.client("s3", **get_settings().s3_client_kwargs())


def write_text(uri: str, text: str) -> None:
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(uri)
        try:
            _s3().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc
        return
    path = Path(uri.removeprefix("file://"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


def read_text(uri: str) -> str:
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split_s3(uri)
        try:
            return _s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFoundError(f"{uri} does not exist") from None
            raise StorageError(f"cannot read {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from exc


def write_ref(uri: str, ref: BaseModel) -> None:
    write_text(uri, ref.model_dump_json(indent=2))


def read_ref(uri: str, cls: type[RefT]) -> RefT:
    text = read_text(uri)
    try:
        return cls.model_validate_json(text)
    except ValidationError as exc:
        raise StorageError(
            f"{uri}: not a valid {cls.__name__}: {exc.errors()[0]['msg']} at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from None
