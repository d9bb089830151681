"""Run the fine-tuning pipeline on this machine with kfp.local against the embedded stack.

Each component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``) with
the same ``EYEOPS_*`` settings: local Ray, MLflow on SQLite under the storage root, and a local
serving process. The steps journal what they did; the journal becomes the summary, and a failed
step's own error (not kfp.local's "task failed") becomes the exception.
"""

from __future__ import annotations

import json
import os
import secrets
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

_AUTH_ENV = ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED")


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


def ensure_api_key() -> str | None:
    """A fresh local API key (scopes classify, chat) when serving auth is not configured; else None.

    Set in this process's environment so the local serving process the deploy step starts uses it.
    """
    if any(os.environ.get(var) for var in _AUTH_ENV):
        return None
    key = secrets.token_urlsafe(24)
    os.environ["EYEOPS_API_KEYS"] = f"{key}:classify,chat"
    return key


def _failure(records: list[StageRecord], recipe: str, kfp_message: str) -> EyeopsError:
    failed = [r for r in records if r.status == "failed"]
    if not failed:
        return EyeopsError(f"pipeline for recipe {recipe!r} failed before any stage reported: {kfp_message}")
    last = failed[-1]
    cls = getattr(errors, last.error_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, EyeopsError)):
        cls = EyeopsError
    return cls(f"pipeline for recipe {recipe!r} failed at stage {last.stage!r}: {last.error}")


def run_local(
    recipe_name: str,
    *,
    data_source: str = "",
    overrides: dict[str, Any] | None = None,
    train_retries: int = 1,
    quiet: bool = False,
) -> PipelineSummary:
    """Run prepare → train → evaluate → register → (gate) → deploy locally; return the summary.

    Raises the failed stage's :class:`EyeopsError` subclass with its message when a stage fails.
    ``quiet`` sends kfp.local's streamed task logs to ``<run>.log`` next to the journal.
    """
    from kfp import local

    load_recipe(recipe_name)  # fail fast, before any subprocess, on an unknown or invalid recipe
    settings = get_settings()
    if not settings.is_local_storage:
        raise ConfigError(f"run_local needs a local EYEOPS_STORAGE_ROOT, got {settings.storage_root!r}")
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
        if quiet:  # kfp.local prints task logs and its own log lines to sys.stdout
            stack.enter_context(redirect_stdout(stack.enter_context(open(log_path, "a", encoding="utf-8"))))
        try:
            pipeline(
                recipe=recipe_name,
                data_source=data_source,
                overrides=json.dumps(overrides or {}),
                train_target="local",
                deploy_backend="local",
            )
        except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE"
            error = _failure(read_journal(journal_path), recipe_name, str(exc))
            if quiet:
                error.args = (f"{error.args[0]} (task logs: {log_path})",)
            raise error from None
    new_runs = sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name not in before)
    return summarise(
        recipe_name,
        new_runs[-1] if new_runs else stamp,
        str(runs_dir),
        time.perf_counter() - start,
        read_journal(journal_path),
        log=str(log_path) if quiet else None,
    )
