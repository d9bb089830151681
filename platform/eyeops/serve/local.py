"""Embedded-mode deployment: run the gateway for a model version as a local process.

``deploy(recipe, version)`` starts ``eyeops serve --backend local`` for the pinned version on a
free port, waits for ``/readyz``, and records pid + URL in ``<storage_root>/serve/<model>.json``.
A later deploy starts the new version first and only then stops the old process (no gap);
``stop(model)`` ends it. Cluster deployments are manifests (KServe InferenceService, RayService).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import httpx
import uvicorn

from eyeops import compute
from eyeops.config import get_settings
from eyeops.errors import ConfigError, ModelNotReady, NotFoundError, StorageError
from eyeops.recipes import Recipe
from eyeops.refs import Endpoint, ModelVersionRef
from eyeops.serve.settings import ServeSettings

Backend = Literal["local", "kserve", "ray"]


def serve_gateway(
    model_ref: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings,
    device: str | None = None,
) -> None:
    """Load the model and serve the gateway in this process until interrupted."""
    from eyeops.serve.gateway import create_app
    from eyeops.serve.limits import configure_logging
    from eyeops.serve.predictor import load_predictor

    configure_logging()

    # Loaded on the compute thread, which then runs every model call (eyeops.compute).
    predictor = compute.call(load_predictor, model_ref, device=device, max_batch_size=settings.max_batch_size)
    app = create_app(predictor, settings)
    # No access log: our middleware logs route + status + request id, never query strings.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _state_dir() -> Path:
    settings = get_settings()
    if not settings.is_local_storage:
        raise StorageError("local deploy keeps its state under a local storage_root, not on S3")
    path = Path(settings.path("serve"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _state_file(model_name: str) -> Path:
    return _state_dir() / f"{model_name}.json"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lines that say nothing about the failure itself (pydantic's link under every validation error).
_NOISE = re.compile(r"^\s*For further information visit https://errors\.pydantic\.dev")


def root_cause(log_text: str, *, max_lines: int = 12, max_chars: int = 1500) -> str:
    """Why a process stopped, read from the end of its output; "" when the output is empty.

    The last failure report wins: the exception line(s) a Python traceback ends with, or the
    ``error: …`` line the eyeops CLI prints for an :class:`EyeopsError` (rejoined where the console
    wrapped it). Without either, the last few lines. Returned as one line.
    """
    lines = [_ANSI.sub("", line).rstrip() for line in log_text.splitlines()]
    lines = [line for line in lines if line.strip() and not _NOISE.match(line)]
    starts = [
        i
        for i, line in enumerate(lines)
        if line.startswith(("error: ", "Traceback (most recent call last):"))
    ]
    if not starts:
        tail = lines[-3:]
    elif lines[starts[-1]].startswith("error: "):
        tail = lines[starts[-1] :]
    else:  # frames are indented: the exception starts at the first line back at column 0
        after = lines[starts[-1] + 1 :]
        first = next((i for i, line in enumerate(after) if not line.startswith(" ")), None)
        tail = after[first:] if first is not None else after[-2:]
    text = " ".join(" ".join(tail[:max_lines]).split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _log_reason(log_path: Path | None, offset: int) -> str:
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as handle:  # this process's part of the log, and its end only
            handle.seek(max(offset, log_path.stat().st_size - 64_000))
            cause = root_cause(handle.read().decode("utf-8", errors="replace"))
    except OSError:
        return f" (log: {log_path})"
    return f": {cause} (log: {log_path})" if cause else f" (log: {log_path}, empty)"


def wait_ready(
    url: str,
    process: subprocess.Popen | None = None,
    timeout_s: float = 180,
    *,
    log_path: Path | None = None,
    log_offset: int = 0,
) -> None:
    """Poll ``/readyz`` until 200; fail early if the process exits.

    The error carries the reason the process wrote to ``log_path`` (from byte ``log_offset`` on).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ModelNotReady(
                f"serving process exited with status {process.returncode} before ready"
                + _log_reason(log_path, log_offset)
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ModelNotReady(f"{url} not ready after {timeout_s:g} s" + _log_reason(log_path, log_offset))


def deploy(
    recipe: Recipe,
    version: ModelVersionRef,
    *,
    backend: Backend = "local",
    port: int | None = None,
    insecure_no_auth: bool = False,
    timeout_s: float = 180,
) -> Endpoint:
    """Serve ``version`` locally (starting or refreshing the model's endpoint) and return it."""
    if backend != "local":
        raise ConfigError(
            f"deploy backend {backend!r} targets a cluster: apply the KServe/RayService "
            "manifests (helm/eyeops); embedded mode deploys with backend='local'"
        )
    if version.name != recipe.register.model_name:
        raise ConfigError(
            f"version {version.name!r} does not belong to recipe model {recipe.register.model_name!r}"
        )
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = _state_dir() / f"{version.name}.log"
    cmd = [
        sys.executable,
        "-m",
        "eyeops",
        "serve",
        "--backend",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        f"models:/{version.name}/{version.version}",
    ]
    if insecure_no_auth:
        cmd.append("--insecure-no-auth")
    if recipe.serve.device != "auto":  # the deploying recipe's device, whatever the saved one says
        cmd += ["--device", recipe.serve.device]
    # The recipe's batching applies unless the environment sets it (ServeSettings reads EYEOPS_*).
    env = os.environ.copy()
    env.setdefault("EYEOPS_MAX_BATCH_SIZE", str(recipe.serve.max_batch_size))
    env.setdefault("EYEOPS_BATCH_WAIT_TIMEOUT_S", str(recipe.serve.batch_wait_timeout_s))
    with open(log_path, "ab") as log:
        log_offset = log.tell()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(url, process, timeout_s, log_path=log_path, log_offset=log_offset)
    except ModelNotReady:
        _terminate(process.pid)
        raise
    previous = _read_state(version.name)
    endpoint = Endpoint(
        url=url, backend="local", model_name=version.name, version=version.version, pid=process.pid
    )
    _state_file(version.name).write_text(endpoint.model_dump_json(indent=2))
    if previous is not None and previous.pid not in (None, process.pid):
        _terminate(previous.pid)
    return endpoint


def _read_state(model_name: str) -> Endpoint | None:
    path = _state_file(model_name)
    if not path.is_file():
        return None
    try:
        return Endpoint.model_validate_json(path.read_text())
    except ValueError as exc:
        raise StorageError(f"{path}: unreadable deploy state ({exc})") from None


def endpoints() -> list[Endpoint]:
    """Every locally deployed endpoint recorded under the storage root."""
    return [e for p in sorted(_state_dir().glob("*.json")) if (e := _read_state(p.stem)) is not None]


def stop(model_name: str | None = None) -> list[Endpoint]:
    """Stop one model's local endpoint (or all of them); returns what was stopped."""
    targets = endpoints() if model_name is None else [e for e in [_read_state(model_name)] if e]
    if model_name is not None and not targets:
        raise NotFoundError(f"no local endpoint recorded for model {model_name!r}")
    for endpoint in targets:
        if endpoint.pid is not None:
            _terminate(endpoint.pid)
        _state_file(endpoint.model_name).unlink(missing_ok=True)
    return targets


def _terminate(pid: int, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after a grace period; a process already gone is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
