"""Why a local pipeline run failed, in its error: serving auth before the run, a task's exception after."""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.
import os
import stat
from contextlib import redirect_stdout

import pytest
from kfp import dsl, local

from eyeops.errors import ConfigError, EyeopsError
from eyeops.pipeline.local import _failure, ensure_api_key, local_key_file, run_local

AUTH_ENV = ("EYEOPS_API_KEYS", "EYEOPS_API_KEYS_FILE", "EYEOPS_AUTH_DISABLED")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def noisy_but_fine(x: int) -> int:
    """Succeeds after printing a handled traceback: its log must not be taken for the failure."""
    import traceback

    try:
        raise KeyError("a handled decoy")
    except KeyError:
        traceback.print_exc()
    return x


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def check_positive(x: int) -> int:
    if x <= 0:
        raise ValueError(f"x={x}: must be positive")
    return x


@dsl.pipeline(name="two-steps")
def two_steps(x: int = 1):
    check_positive(x=noisy_but_fine(x=x).output)


def test_a_kfp_local_task_failure_is_explained_by_its_exception(tmp_path):
    """A real kfp.local run with a broken input: the task fails outside any journaled stage, so the
    pipeline error must carry the exception the failed task's log ends with, not "task failed"."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True
    )
    log_path = tmp_path / "run.log"
    with (
        open(log_path, "w", encoding="utf-8") as log,
        redirect_stdout(log),
        pytest.raises(RuntimeError) as info,
    ):
        two_steps(x=-3)
    task_log = log_path.read_text()
    assert "KeyError: 'a handled decoy'" in task_log  # the first task's traceback is in the same log

    error = _failure([], "two-steps", str(info.value), task_log)
    message = str(error)
    assert "at task 'check-positive'" in message and "before any stage reported" in message
    assert message.endswith("ValueError: x=-3: must be positive"), message
    assert "decoy" not in message and "Traceback" not in message and "\x1b[" not in message


def test_run_local_refuses_to_start_without_serving_auth(monkeypatch, tmp_path):
    for var in AUTH_ENV:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(
        ConfigError, match="no API keys are configured: set EYEOPS_API_KEYS='KEY:classify,chat'"
    ):
        run_local("fundus-classifier")
    monkeypatch.setenv("EYEOPS_API_KEYS", "too-short:classify")
    with pytest.raises(ConfigError, match="entry 1: key shorter than 16 characters"):
        run_local("fundus-classifier")
    monkeypatch.setenv("EYEOPS_API_KEYS", "a-long-enough-key-0123:classify")
    monkeypatch.setenv("EYEOPS_API_KEYS_FILE", str(tmp_path / "missing-keys"))
    with pytest.raises(ConfigError, match="missing-keys: cannot read"):
        run_local("fundus-classifier")
    assert not (tmp_path / "eyeops" / "pipeline-runs").exists()  # nothing ran


def test_the_local_key_file_is_created_once_private_and_reused(monkeypatch):
    for var in AUTH_ENV:
        # setenv first, so monkeypatch records the original state and restores it: ensure_api_key
        # writes os.environ itself, and a key file left named there broke every later serving test.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    path = local_key_file()
    key = ensure_api_key(path)
    assert key and len(key) >= 16
    assert path.read_text() == f"{key}:classify,chat\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.environ["EYEOPS_API_KEYS_FILE"] == str(path) and "EYEOPS_API_KEYS" not in os.environ
    assert ensure_api_key(path) is None  # configured now: leave it alone

    monkeypatch.delenv("EYEOPS_API_KEYS_FILE")
    assert ensure_api_key(path) == key  # a later run: same key, so clients keep working
    monkeypatch.delenv("EYEOPS_API_KEYS_FILE")
    path.write_text("short:classify\n")
    with pytest.raises(ConfigError, match="delete the file to get a new key"):
        ensure_api_key(path)


def test_a_journaled_stage_error_still_wins_over_the_task_log():
    from eyeops.pipeline.journal import StageRecord

    record = StageRecord(stage="deploy", status="failed", error_type="ModelNotReady", error="exited: why")
    error = _failure([record], "r", "Inner task failed: 'deploy'.", "ValueError: not this")
    assert type(error).__name__ == "ModelNotReady" and str(error).endswith("stage 'deploy': exited: why")
    assert isinstance(error, EyeopsError)
