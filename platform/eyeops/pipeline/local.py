"""Run the fine-tuning pipeline on this machine with kfp.local against the embedded stack.

Each component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``) with
the same ``EYEOPS_*`` settings: local Ray, MLflow on SQLite under the storage root, and a local
serving process. The steps journal what they did; the journal becomes the summary, and a failed
step's own error (not kfp.local's "task failed") becomes the exception; a task that failed before
its step could journal anything is explained by the exception at the end of its log.

The deploy step starts a local server, so serving auth is checked before anything runs: the
embedded run never trains for minutes to then fail on a missing or malformed API key.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eyeops import errors
from eyeops.config import get_settings
from eyeops.errors import ConfigError, EyeopsError
from eyeops.pipeline.compile import load_pipelines_module
from eyeops.pipeline.journal import JOURNAL_ENV, StageRecord, read_journal
from eyeops.pipeline.summary import PipelineSummary, summarise
from eyeops.recipes import load_recipe
from eyeops.serve.local import root_cause

_AUTH_ENV = ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED")
LOCAL_KEY_SCOPES = "classify,chat"
_ANSI = r"(?:\x1b\[[0-9;]*m)?"
_FAILED_TASK = re.compile(rf"Inner task failed: {_ANSI}'(?P<task>[^']+)'")


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def local_key_file() -> Path:
    """Where embedded mode keeps its API key: ``<storage_root>/serve/api-key`` (local storage only)."""
    settings = get_settings()
    if not settings.is_local_storage:
        raise ConfigError(f"run_local needs a local EYEOPS_STORAGE_ROOT, got {settings.storage_root!r}")
    return Path(settings.path("serve", "api-key"))


def _read_or_create_key(path: Path) -> str:
    """The key kept in ``path`` (one ``KEY:classify,chat`` line, mode 0600), created on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text(encoding="utf-8").strip()
        key = text.rpartition(":")[0]
        if len(key) < 16 or "\n" in text:
            raise ConfigError(
                f"{path}: expected one 'KEY:{LOCAL_KEY_SCOPES}' line with a key of 16+ characters; "
                "delete the file to get a new key"
            ) from None
        return key
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{key}:{LOCAL_KEY_SCOPES}\n")
    return key


def ensure_api_key(key_file: Path | None = None) -> str | None:
    """A local API key (scopes classify, chat) when serving auth is not configured; else None.

    Set in this process's environment so the local serving process the deploy step starts uses it.
    Without ``key_file`` the key lives only there; with it, the key is kept in that file (created
    once, 0600, reused by later runs) because the endpoint outlives this process and its clients
    need the key: ``EYEOPS_API_KEYS_FILE`` then names the file.
    """
    if any(os.environ.get(var) for var in _AUTH_ENV):
        return None
    if key_file is not None:
        key = _read_or_create_key(key_file)
        os.environ["EYEOPS_API_KEYS_FILE"] = str(key_file)
        return key
    key = secrets.token_urlsafe(24)
    os.environ["EYEOPS_API_KEYS"] = f"{key}:{LOCAL_KEY_SCOPES}"
    return key


def check_serving_auth() -> None:
    """Fail now, with what to set, if the server the deploy step starts would refuse to start."""
    from eyeops.serve.auth import ApiKeyAuth
    from eyeops.serve.settings import load_serve_settings

    if not any(os.environ.get(var) for var in _AUTH_ENV):
        raise ConfigError(
            "the pipeline's deploy step serves the model and no API keys are configured: set "
            f"EYEOPS_API_KEYS='KEY:{LOCAL_KEY_SCOPES}' (a key of 16+ characters) or EYEOPS_API_KEYS_FILE, "
            "or EYEOPS_AUTH_DISABLED=true for local development only "
            "(`eyeops pipeline run` creates a local key itself)"
        )
    try:
        ApiKeyAuth.from_settings(load_serve_settings())
    except ConfigError as exc:
        raise ConfigError(f"serving auth for the pipeline's deploy step: {exc}") from None


def _task_output(task_log: str, task: str) -> str:
    """The lines kfp.local streamed for the last run of ``task`` (all of ``task_log`` if not found)."""
    start = re.compile(rf"Executing task {_ANSI}'{re.escape(task)}'")
    end = re.compile(rf"Task {_ANSI}'{re.escape(task)}'{_ANSI} finished with status")
    lines = task_log.splitlines()
    first = max((i for i, line in enumerate(lines) if start.search(line)), default=None)
    if first is None:
        return task_log
    last = next((i for i in range(first, len(lines)) if end.search(lines[i])), len(lines))
    return "\n".join(line.removeprefix("    ") for line in lines[first + 1 : last])  # kfp indents by 4


def _failure(records: list[StageRecord], recipe: str, kfp_message: str, task_log: str = "") -> EyeopsError:
    failed = [r for r in records if r.status == "failed"]
    if not failed:
        match = _FAILED_TASK.search(kfp_message)
        task = match["task"] if match else None
        cause = root_cause(_task_output(task_log, task) if task else task_log) or kfp_message
        where = f" at task {task!r}" if task else ""
        return EyeopsError(f"pipeline for recipe {recipe!r} failed{where} before any stage reported: {cause}")
    last = failed[-1]
    cls = getattr(errors, last.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, EyeopsError)):
        cls = EyeopsError
    return cls(f"pipeline for recipe {recipe!r} failed at stage {last.stage!r}: {last.error}")


class _Tee(io.TextIOBase):
    """kfp.local's output to the terminal and to the run's log (where a failure's cause is read)."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def run_local(
    recipe_name: str,
    *,
    data_source: str = "",
    overrides: dict[str, Any] | None = None,
    train_retries: int = 1,
    quiet: bool = False,
) -> PipelineSummary:
    """Run prepare → train → evaluate → register → (gate) → deploy locally; return the summary.

    Serving auth is checked first (:func:`check_serving_auth`). Raises the failed stage's
    :class:`EyeopsError` subclass with its message when a stage fails, or the exception a task's
    log ends with when it failed before its stage reported. kfp.local's streamed task logs go to
    ``<run>.log`` next to the journal, and also to stdout unless ``quiet``.
    """
    from kfp import local

    load_recipe(recipe_name)  # fail fast, before any subprocess, on an unknown or invalid recipe
    settings = get_settings()
    if not settings.is_local_storage:
        raise ConfigError(f"run_local needs a local EYEOPS_STORAGE_ROOT, got {settings.storage_root!r}")
    check_serving_auth()
    finetune = load_pipelines_module()
    runs_dir = Path(settings.path("pipeline-runs"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    journal_path = runs_dir / f"{stamp}.journal.jsonl"
    log_path = runs_dir / f"{stamp}.log"
    before = {p.name for p in runs_dir.iterdir()}
    # Children must agree with this process on where everything lives, whatever set it here.
    env = {
        "EYEOPS_STORAGE_ROOT": settings.storage_root,
        "EYEOPS_MLFLOW_TRACKING_URI": settings.tracking_uri,
        JOURNAL_ENV: str(journal_path),
        "EYEOPS_MODE": "embedded",
    }
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(runs_dir), raise_on_error=True
    )
    pipeline = finetune.build_pipeline(train_retries=train_retries)
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(_env(env))
        stack.enter_context(warnings.catch_warnings())
        # kfp.local warns that the (cluster) image is not a python image: here the venv runs the steps.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        log = stack.enter_context(open(log_path, "a", encoding="utf-8"))
        # kfp.local prints task logs and its own log lines to sys.stdout
        stack.enter_context(redirect_stdout(log if quiet else _Tee(sys.stdout, log)))
        try:
            pipeline(
                recipe=recipe_name,
                data_source=data_source,
                overrides=json.dumps(overrides or {}),
                train_target="local",
                deploy_backend="local",
            )
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE"
            log.flush()
            task_log = log_path.read_text(encoding="utf-8", errors="replace")
            error = _failure(read_journal(journal_path), recipe_name, str(exc), task_log)
            error.args = (f"{error.args[0]} (task logs: {log_path})",)
            raise error from None
    new_runs = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in before)
    return summarise(
        recipe_name,
        new_runs[-1] if new_runs else stamp,
        str(runs_dir),
        time.perf_counter() - start,
        read_journal(journal_path),
        log=str(log_path),
    )
