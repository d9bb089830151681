"""Ray Serve face: the gateway routes through @serve.batch, and replicas scale up then down.

Load comes from a separate process (a plain HTTP client); the test process is the Ray driver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from eyeops_testing.serving import API_KEY, API_KEYS, b64

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOAD_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time, pathlib, httpx
    url, key, image_file, stop_file = sys.argv[1:5]
    image_b64 = pathlib.Path(image_file).read_text()
    max_s = float(sys.argv[5])
    codes, lock, deadline = {}, threading.Lock(), time.monotonic() + max_s
    def worker():
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
            while time.monotonic() < deadline and not pathlib.Path(stop_file).exists():
                status = c.post(url + "/v1/classify", json={"image_b64": image_b64}).status_code
                with lock:
                    codes[status] = codes.get(status, 0) + 1
    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]; [t.join() for t in threads]
    print(json.dumps(codes))
""")


def _wait_for(predicate, timeout_s: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def ray_serve(in_registry, monkeypatch):
    import ray
    from ray import serve

    monkeypatch.setenv("EYEOPS_API_KEYS", API_KEYS)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


def test_autoscaled_batched_app_scales_up_and_down(ray_serve, in_registry, retina_jpeg, tmp_path):
    from eyeops.recipes import ServeSpec
    from eyeops.serve.local import free_port
    from eyeops.serve.ray_app import replica_count, run_ray

    spec = ServeSpec(
        backend="ray",
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        max_batch_size=8,
        batch_wait_timeout_s=0.01,
        upscale_delay_s=1,
        downscale_delay_s=2,
    )
    url = run_ray(
        f"{in_registry.model_name}@champion", spec, port=free_port(), blocking=False, replica_cpus=0.5
    )
    assert replica_count() == 1

    # The gateway routes answer through the replica, naming the model version.
    r = httpx.post(
        url + "/v1/classify",
        json={"images_b64": [b64(retina_jpeg)] * 2},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"]["version"] == in_registry.version and len(r.json()["results"]) == 2
    # The real photograph is unlike the synthetic training images: flagged, no findings (issue 17).
    assert all(i["out_of_distribution"] and i["findings"] == [] for i in r.json()["results"])
    assert httpx.post(url + "/v1/classify", json={"image_b64": b64(retina_jpeg)}).status_code == 401
    assert (
        httpx.post(
            url + "/v1/classify", json={"image_b64": "%%"}, headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 400
    )

    stop_file = tmp_path / "stop"
    image_file = tmp_path / "retina.b64"
    image_file.write_text(b64(retina_jpeg))
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD_SCRIPT, url, API_KEY, str(image_file), str(stop_file), "120"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: replica_count() >= 2, 100, "a second replica under load")
    finally:
        stop_file.touch()
        out, _ = load.communicate(timeout=120)
    codes = {int(k): v for k, v in json.loads(out).items()}
    assert codes.get(200, 0) > 0 and set(codes) == {200}, codes
    _wait_for(lambda: replica_count() == 1, 60, "scale back down to one replica after load stops")
