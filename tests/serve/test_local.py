"""Embedded-mode deploy: start, refresh and stop a local endpoint; ``eyeops predict --url``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eyeops_testing.serving import API_KEY, API_KEYS

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_deploy_refresh_predict_and_stop(in_registry, monkeypatch, tmp_path, retina_jpeg):
    from eyeops.errors import ConfigError, NotFoundError
    from eyeops.serve.local import deploy, endpoints, stop

    monkeypatch.setenv("EYEOPS_API_KEYS", API_KEYS)
    with pytest.raises(ConfigError, match="cluster"):
        deploy(in_registry.recipe, in_registry.version_ref, backend="kserve")

    first = deploy(in_registry.recipe, in_registry.version_ref)
    try:
        assert first.backend == "local" and first.version == in_registry.version
        assert httpx.get(first.url + "/readyz").status_code == 200
        assert [e.pid for e in endpoints()] == [first.pid]
        served_env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{first.pid}/environ").read_text().split("\0")
            if "=" in item
        )
        serve = in_registry.recipe.serve  # the recipe's batching reaches the serving process
        assert served_env["EYEOPS_MAX_BATCH_SIZE"] == str(serve.max_batch_size)
        assert served_env["EYEOPS_BATCH_WAIT_TIMEOUT_S"] == str(serve.batch_wait_timeout_s)

        image = tmp_path / "retina.jpg"
        image.write_bytes(retina_jpeg)
        out = subprocess.run(
            [sys.executable, "-m", "eyeops", "predict", str(image), "--url", first.url, "--api-key", API_KEY],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert (
            answer["model"]["version"] == in_registry.version
            and len(answer["results"][0]["probabilities"]) == 8
        )
        bad = subprocess.run(
            [sys.executable, "-m", "eyeops", "predict", str(image), "--url", first.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and "401 unauthorized" in bad.stderr and "Traceback" not in bad.stderr

        second = deploy(in_registry.recipe, in_registry.version_ref)  # refresh: new process, then old stops
        assert second.pid != first.pid and httpx.get(second.url + "/readyz").status_code == 200
        assert not _alive(first.pid)
        assert [e.pid for e in endpoints()] == [second.pid]
    finally:
        stopped = stop()
    assert stopped and all(not _alive(e.pid) for e in stopped)
    assert endpoints() == []
    with pytest.raises(NotFoundError):
        stop(in_registry.model_name)
