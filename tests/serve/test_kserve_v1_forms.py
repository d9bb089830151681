"""KServe v1 ``:predict`` takes ``image_b64`` and TF-Serving's ``{"image": {"b64": ...}}``, on a real
``kserve.ModelServer``; malformed instances get a 400 JSON body naming the bad part."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from eyeops_testing.serving import API_KEY, b64, start_server

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TF = "{'b64': '<base64>'} (TF-Serving binary form)"
FORMS = "{'image_b64': '<base64>'} or {'image': {'b64': '<base64>'}} objects"


@pytest.fixture(scope="module")
def kserve_server(registered, tmp_path_factory):
    proc = start_server(registered, tmp_path_factory, "kserve")
    try:
        yield proc.wait_ready("/v2/health/ready")
    finally:
        proc.stop()


def test_tf_serving_b64_form_answers_like_image_b64(kserve_server, registered, retina_jpeg):
    from kserve import InferenceRESTClient, RESTConfig

    async def infer(instances):
        client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=60))
        try:
            return await client.infer(
                kserve_server.url, {"instances": instances}, model_name=registered.model_name, headers=AUTH
            )
        finally:
            await client.close()

    encoded = b64(retina_jpeg)
    plain = asyncio.run(infer([{"image_b64": encoded}]))["predictions"]
    both = asyncio.run(infer([{"image": {"b64": encoded}}, {"image_b64": encoded}]))["predictions"]
    assert len(both) == 2
    for prediction in both:
        assert list(prediction["probabilities"]) == list(plain[0]["probabilities"])
        assert prediction["probabilities"] == pytest.approx(plain[0]["probabilities"], abs=1e-5)


@pytest.mark.parametrize(
    ("instance", "message"),
    [
        ({"image": "aGk="}, f"instances[0].image: expected {TF}, got a str"),
        ({"image": {"data": "aGk="}}, f"instances[0].image: expected {TF}, got keys ['data']"),
        ({"image": {"b64": "aGk=", "mime": "png"}}, "got keys ['b64', 'mime']"),
        ({"image": {"b64": 5}}, "instances[0].image.b64: expected a non-empty base64 string"),
        ({"image_b64": None}, "instances[0].image_b64: expected a non-empty base64 string"),
        ({"image": {"b64": "%%%"}}, "instances[0].image.b64: not valid base64"),
        ({"image": {"b64": ""}}, "instances[0].image.b64: expected a non-empty base64 string"),
        ({"image": {"b64": "aGk="}, "image_b64": "aGk="}, "instances[0]: give one of 'image_b64' or 'image'"),
        ({"picture": "aGk="}, f"instances[0]: expected one of {FORMS}, got keys ['picture']"),
        ("aGk=", "instances[0]: expected an object, one of"),
    ],
)  # fmt: skip
def test_malformed_instances_get_a_precise_400(kserve_server, registered, instance, message):
    url = f"{kserve_server.url}/v1/models/{registered.model_name}:predict"
    r = httpx.post(url, json={"instances": [instance]}, headers=AUTH, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and message in error["message"], error
    assert error["request_id"] == r.headers["x-request-id"]


def test_a_bad_second_instance_is_named_by_its_index(kserve_server, registered, retina_jpeg):
    url = f"{kserve_server.url}/v1/models/{registered.model_name}:predict"
    body = {
        "instances": [{"image": {"b64": b64(retina_jpeg)}}, {"image": {"b64": b64(b"GIF89a" + b"0" * 200)}}]
    }
    r = httpx.post(url, json=body, headers=AUTH, timeout=60)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["message"].startswith("instances[1]: unsupported format"), r.text
