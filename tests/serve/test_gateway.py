"""The gateway as a real process (``eyeops serve --backend local``) classifying a real fundus photo."""

from __future__ import annotations

import io
import zlib

import httpx
import numpy as np
import pytest
from eyeops_testing.serving import ADMIN_KEY, API_KEY, CHAT_KEY, MAX_BODY, b64
from PIL import Image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(gateway_server):
    return gateway_server


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if code:
        assert error["code"] == code, error
    return error


def test_classify_real_fundus_photo_names_model_version(client, registered, retina_jpeg):
    response = client.post("/v1/classify", json={"image_b64": b64(retina_jpeg)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-request-id"]
    assert body["model"]["name"] == registered.model_name
    assert body["model"]["version"] == registered.version
    assert body["model"]["alias"] == "champion"
    assert body["model"]["recipe"] == "serve-test"
    (result,) = body["results"]
    assert list(result["probabilities"]) == ["N", "D", "G", "C", "A", "H", "M", "O"]
    assert all(0.0 <= p <= 1.0 for p in result["probabilities"].values())
    top = [t["label"] for t in result["top"]]
    assert top == sorted(result["probabilities"], key=lambda k: -result["probabilities"][k])[:3]
    assert all(result["probabilities"][f] >= 0.5 for f in result["findings"])


def test_multipart_tiff_and_dicom_give_the_same_answer(client, retina_jpeg):
    # A smaller copy keeps the uncompressed TIFF/DICOM bodies under the server's body limit.
    pixels = Image.open(io.BytesIO(retina_jpeg)).convert("RGB").resize((512, 512))
    as_json = client.post("/v1/classify", json={"image_b64": b64(_png(pixels))}).json()["results"][0]
    multipart = client.post("/v1/classify", files={"image": ("eye.png", _png(pixels), "image/png")})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["results"][0]["probabilities"] == pytest.approx(
        as_json["probabilities"], abs=1e-5
    )

    tiff = io.BytesIO()
    pixels.save(tiff, format="TIFF")
    r = client.post("/v1/classify", json={"image_b64": b64(tiff.getvalue())})
    assert r.json()["results"][0]["probabilities"] == pytest.approx(as_json["probabilities"], abs=1e-5)

    dicom = _dicom(np.asarray(pixels))
    r = client.post("/v1/classify", files={"image": ("eye.dcm", dicom, "application/dicom")})
    assert r.status_code == 200, r.text
    # Min-max windowing of the DICOM pixels may shift values slightly: same ranking, close scores.
    assert r.json()["results"][0]["probabilities"] == pytest.approx(as_json["probabilities"], abs=0.05)


def test_batch_of_images_in_one_request(client, retina_jpeg):
    r = client.post("/v1/classify", json={"images_b64": [b64(retina_jpeg)] * 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    # Batch composition may change float rounding slightly, never the answer.
    assert len(results) == 3 and all(
        r["probabilities"] == pytest.approx(results[0]["probabilities"], abs=1e-5) for r in results
    )


def test_models_health_and_metrics(client, server, registered):
    models = client.get("/v1/models").json()
    (card,) = models["data"]
    assert card["id"] == registered.model_name and card["version"] == registered.version
    assert card["capabilities"] == ["classify"] and card["recipe"] == "serve-test"
    assert models["models"] == [registered.model_name]
    assert httpx.get(server.url + "/healthz").json() == {"status": "alive"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    client.post("/v1/classify", json={})
    metrics = httpx.get(server.url + "/metrics").text
    assert 'eyeops_http_requests_total{method="POST",route="/v1/classify",status="200"}' in metrics
    assert 'route="/v1/classify",status="422"' in metrics
    assert "eyeops_batch_size_bucket" in metrics


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-key-wrong-key-123"}, 401, "unauthorized"),
        ({"Authorization": "Basic abc"}, 401, "unauthorized"),
        ({"X-API-Key": CHAT_KEY}, 403, "forbidden"),
    ],
)
def test_auth_refused(server, retina_jpeg, headers, status, code):
    r = httpx.post(server.url + "/v1/classify", json={"image_b64": b64(retina_jpeg)}, headers=headers)
    _assert_error(r, status, code)
    assert CHAT_KEY not in r.text


def test_auth_accepted_for_admin_and_request_id_echoed(server, retina_jpeg):
    r = httpx.post(
        server.url + "/v1/classify",
        json={"image_b64": b64(retina_jpeg)},
        headers={"X-API-Key": ADMIN_KEY, "X-Request-ID": "client-id-42"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-42"
    _assert_error(httpx.get(server.url + "/v1/models"), 401)


def _bomb_png() -> bytes:
    """A 3000×3000 black PNG: ~10 kB on the wire, 9 M pixels once decoded."""
    return _png(Image.new("L", (3000, 3000)))


def _dicom(pixels: np.ndarray) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("eye.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "OP", meta.MediaStorageSOPClassUID, generate_uid()
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _bad_requests(retina_jpeg: bytes) -> list[tuple[str, dict, int, str]]:
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    truncated_png = _png(Image.new("RGB", (64, 64), "red"))[:60]
    bad_crc = bytearray(_png(Image.new("RGB", (32, 32), "red")))
    bad_crc[40:44] = zlib.compress(b"x")[:4]
    big = b"\xff\xd8\xff" + b"0" * (MAX_BODY + 10)
    return [
        (
            "oversized body",
            {"content": big, "headers": {"content-type": "application/octet-stream"}},
            413,
            "payload_too_large",
        ),
        ("oversized json", {"json": {"image_b64": b64(big[:MAX_BODY])}}, 413, "payload_too_large"),
        ("pixel bomb", {"json": {"image_b64": b64(_bomb_png())}}, 413, "payload_too_large"),
        ("gif", {"json": {"image_b64": b64(gif.getvalue())}}, 415, "unsupported_media_type"),
        (
            "text as image",
            {"files": {"image": ("a.txt", b"hello world", "text/plain")}},
            415,
            "unsupported_media_type",
        ),
        ("truncated jpeg", {"json": {"image_b64": b64(retina_jpeg[:2000])}}, 400, "invalid_request"),
        ("truncated png", {"json": {"image_b64": b64(truncated_png)}}, 400, "invalid_request"),
        ("corrupt png", {"json": {"image_b64": b64(bytes(bad_crc))}}, 400, "invalid_request"),
        (
            "corrupt dicom",
            {"json": {"image_b64": b64(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")}},
            400,
            "invalid_request",
        ),
        ("bad base64", {"json": {"image_b64": "not*base64!"}}, 400, "invalid_request"),
        (
            "bad json",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "invalid_request",
        ),
        (
            "wrong content type",
            {"content": b"abc", "headers": {"content-type": "text/plain"}},
            400,
            "invalid_request",
        ),
        ("missing fields", {"json": {}}, 422, "validation_error"),
        ("both fields", {"json": {"image_b64": "aGk=", "images_b64": ["aGk="]}}, 422, "validation_error"),
        ("wrong type", {"json": {"image_b64": 5}}, 422, "validation_error"),
        ("unknown field", {"json": {"image_b64": "aGk=", "patient": "x"}}, 422, "validation_error"),
        ("too many images", {"json": {"images_b64": ["aGk="] * 9}}, 413, "payload_too_large"),
        (
            "multipart without image",
            {"files": {"other": ("a.png", b"x", "image/png")}},
            400,
            "invalid_request",
        ),
        ("unknown model", {"json": {"model": "nope", "image_b64": b64(retina_jpeg)}}, 404, "not_found"),
    ]


def test_every_bad_input_is_a_4xx_json_error_and_server_keeps_serving(client, server, retina_jpeg):
    for name, kwargs, status, code in _bad_requests(retina_jpeg):
        response = client.post("/v1/classify", **kwargs)
        try:
            _assert_error(response, status, code)
        except AssertionError as exc:
            raise AssertionError(f"case {name!r}: {exc}") from None
    _assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    _assert_error(client.get("/v1/classify"), 405, "method_not_allowed")
    assert client.post("/v1/classify", json={"image_b64": b64(retina_jpeg)}).status_code == 200


def test_chat_on_a_classifier_is_refused_cleanly(server, retina_jpeg):
    headers = {"Authorization": f"Bearer {CHAT_KEY}"}
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(retina_jpeg)}"}},
            {"type": "text", "text": "Any signs of glaucoma?"},
        ],
    }
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "eyeops-serve-test@champion", "messages": [message]},
    )
    assert "cannot chat" in _assert_error(r, 400, "invalid_request")["message"]
    r = httpx.post(server.url + "/v1/chat/completions", headers=headers, json={"model": "x", "messages": []})
    _assert_error(r, 422, "validation_error")
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "unknown", "messages": [{"role": "user", "content": "hi"}]},
    )
    _assert_error(r, 404, "not_found")
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
    )
    _assert_error(r, 403, "forbidden")


def test_logs_hold_no_image_bytes(client, server, retina_jpeg):
    client.post("/v1/classify", json={"image_b64": b64(retina_jpeg)})
    client.post("/v1/classify", json={"image_b64": b64(retina_jpeg[:2000])})
    log = server.log()
    encoded = b64(retina_jpeg)
    assert "/v1/classify" in log  # the access line is there …
    assert encoded[1000:1040] not in log and encoded[:40] not in log  # … the image is not
