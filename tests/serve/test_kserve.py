"""The KServe face as a real ``kserve.ModelServer`` process, driven by ``kserve.InferenceRESTClient``."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from eyeops_testing.serving import API_KEY, API_KEYS, CHAT_KEY, b64, start_server

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(registered, tmp_path_factory):
    proc = start_server(registered, tmp_path_factory, "kserve")
    try:
        yield proc.wait_ready("/v2/health/ready")
    finally:
        proc.stop()


def _run(coro):
    return asyncio.run(coro)


def test_v1_predict_and_health_with_kserve_client(server, registered, retina_jpeg):
    from kserve import InferenceRESTClient, RESTConfig

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=60))
        try:
            live = await client.is_server_live(server.url)
            ready = await client.is_model_ready(server.url, registered.model_name)
            result = await client.infer(
                server.url,
                {"instances": [{"image_b64": b64(retina_jpeg)}] * 2},
                model_name=registered.model_name,
                headers=AUTH,
            )
        finally:
            await client.close()
        return live, ready, result

    live, ready, result = _run(go())
    assert live and ready
    assert len(result["predictions"]) == 2
    probs = result["predictions"][0]["probabilities"]
    assert list(probs) == ["N", "D", "G", "C", "A", "H", "M", "O"]
    # The real photograph is unlike the synthetic training images: flagged, no findings (issue 17).
    first = result["predictions"][0]
    assert first["out_of_distribution"] is True and first["findings"] == []
    assert first["message"] == "outside what this model was trained on"
    assert first["ood_score"] > first["ood_threshold"]
    assert result["model"]["version"] == registered.version and result["model"]["alias"] == "champion"


@pytest.mark.parametrize("binary", [True, False])
def test_v2_infer_bytes_in_fp32_out(server, registered, retina_jpeg, binary):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def go():
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
        tensor = InferInput(name="image", shape=[1], datatype="BYTES")
        if binary:  # the binary extension: raw JPEG bytes after the JSON header
            tensor.set_data_from_numpy(np.array([retina_jpeg], dtype=np.object_), binary_data=True)
        else:  # JSON BYTES elements are strings: base64 of the file
            tensor.data = [b64(retina_jpeg)]
        try:
            ready = await client.is_server_ready(server.url)
            response = await client.infer(
                server.url,
                InferRequest(registered.model_name, [tensor]),
                model_name=registered.model_name,
                headers=dict(AUTH),
            )
        finally:
            await client.close()
        return ready, response

    ready, response = _run(go())
    assert ready
    output, flags, scores = response.outputs
    assert output.name == "probabilities" and output.datatype == "FP32" and output.shape == [1, 8]
    assert (flags.name, flags.datatype, flags.shape) == ("out_of_distribution", "BOOL", [1])
    assert (scores.name, scores.datatype, scores.shape) == ("ood_score", "FP32", [1])
    assert flags.as_numpy().tolist() == [True]
    assert scores.as_numpy()[0] > float(scores.parameters["threshold"])
    probs = output.as_numpy()
    assert probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    assert response.parameters["version"] == str(registered.version)
    assert response.parameters["alias"] == "champion"

    # The same image through the gateway route mounted in the same server gives the same numbers.
    gateway = httpx.post(
        server.url + "/v1/classify", json={"image_b64": b64(retina_jpeg)}, headers=AUTH, timeout=60
    ).json()["results"][0]["probabilities"]
    assert probs[0].tolist() == pytest.approx(
        [gateway[k] for k in ["N", "D", "G", "C", "A", "H", "M", "O"]], abs=1e-5
    )


def test_kserve_routes_check_auth_and_bad_input(server, registered, retina_jpeg):
    url = f"{server.url}/v1/models/{registered.model_name}:predict"
    body = {"instances": [{"image_b64": b64(retina_jpeg)}]}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"X-API-Key": CHAT_KEY}).status_code == 403
    for bad, status in [
        ({"instances": [{"image_b64": "%%%"}]}, 400),
        ({"instances": []}, 400),
        ({"instances": [{"image_b64": b64(b"GIF89a" + b"0" * 200)}]}, 415),
        ({"instances": [{"image_b64": b64(retina_jpeg[:1500])}]}, 400),
    ]:
        r = httpx.post(url, json=bad, headers=AUTH, timeout=60)
        assert r.status_code == status, r.text
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    v2 = f"{server.url}/v2/models/{registered.model_name}/infer"
    r = httpx.post(
        v2,
        json={"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        headers=AUTH,
    )
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/v1/models/unknown:predict", json=body, headers=AUTH)
    assert 400 <= r.status_code < 500
    models = httpx.get(server.url + "/v1/models", headers=AUTH).json()
    assert models["models"] == [registered.model_name] and models["data"][0]["version"] == registered.version
    assert httpx.post(url, json=body, headers=AUTH, timeout=60).status_code == 200


def _probe_port_and_path(pod: dict) -> tuple[int, str, list[str]]:
    (c,) = pod["containers"]
    probe = c["readinessProbe"]["httpGet"]
    return probe["port"], probe["path"], c["args"]


def test_the_predictors_readiness_probe_asks_what_the_server_answers(server, registered):
    """The path the chart's and the pipeline-built predictor's readinessProbe ask, on the port their
    ``eyeops serve --backend kserve`` listens on: the real KServe face answers it 200, without the
    API key the kubelet does not have, once the model is loaded."""
    from eyeops.chart import helm_template
    from eyeops.kube import build_inference_service

    chart = next(o for o in helm_template() if o["kind"] == "InferenceService")["spec"]["predictor"]
    built = build_inference_service(registered.recipe, registered.version_ref, namespace="eyeops")
    probes = [_probe_port_and_path(chart), _probe_port_and_path(built["spec"]["predictor"])]
    (chart_port, chart_path, chart_args), (built_port, built_path, built_args) = probes
    assert chart_path == built_path
    assert f"--port={chart_port}" in chart_args and built_args[built_args.index("--port") + 1] == str(
        built_port
    )
    r = httpx.get(server.url + built_path, timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_readiness_is_503_until_a_model_is_loaded():
    """The same route with no model behind it (still loading): not ready, so no traffic yet."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from eyeops.kube.objects import READINESS_PATH
    from eyeops.serve.gateway import install
    from eyeops.serve.settings import ServeSettings

    app = install(FastAPI(), None, ServeSettings(api_keys=API_KEYS))
    with TestClient(app) as client:
        r = client.get(READINESS_PATH)
    assert r.status_code == 503 and "loading" in r.json()["error"]["message"]
