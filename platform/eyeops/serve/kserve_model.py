"""The KServe face: a ``kserve.Model`` over the Predictor, served by ``kserve.ModelServer``.

- v1 ``POST /v1/models/{name}:predict`` with ``{"instances": [{"image_b64": "..."}]}`` or the
  TF-Serving binary convention ``{"instances": [{"image": {"b64": "..."}}]}`` →
  ``{"predictions": [{"probabilities", "findings", "out_of_distribution", "ood_score",
  "ood_threshold", "message"}], "model": {...}}``;
- Open Inference Protocol v2 ``POST /v2/models/{name}/infer`` with a BYTES input ``image``
  (shape ``[N]``, one encoded image per element) → FP32 output ``probabilities`` ``[N, labels]``,
  the label order in the output's ``parameters`` and the model stamp in the response's; a model
  with an OOD screen adds BOOL ``out_of_distribution`` ``[N]`` and FP32 ``ood_score`` ``[N]``.

KServe's app is a module-level FastAPI, so the gateway routes (classify, chat, /v1/models, health,
metrics) are installed into the same server; ours are added first and therefore win for
``GET /v1/models`` (our body is a superset of KServe's: it keeps the ``models`` name list) and
``/metrics`` (same default Prometheus registry). KServe's own routes get API-key checks from
:class:`KServeGuard` (which also accepts binary BYTES).
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.protocol.infer_type import deserialize_bytes_tensor

from eyeops import compute
from eyeops.errors import EyeopsError, InvalidRequest, PayloadTooLarge
from eyeops.serve import images as imaging
from eyeops.serve.auth import ApiKeyAuth, presented_key
from eyeops.serve.batching import InferenceBackend
from eyeops.serve.limits import _send_json, error_body, request_id_of
from eyeops.serve.settings import ServeSettings

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OOD_OUTPUT, OOD_SCORE_OUTPUT = "out_of_distribution", "ood_score"


class EyeopsKServeModel(Model):
    """Classification over KServe's v1 and v2 protocols, batched through the shared backend."""

    def __init__(self, name: str, backend: InferenceBackend, settings: ServeSettings) -> None:
        super().__init__(name)
        self.backend, self.settings = backend, settings
        self.predictor = backend.get(name)
        self.ready = True  # the Predictor is loaded before the server starts

    def _decode(self, blobs: list[bytes], field: str) -> list:
        if not blobs:
            raise InvalidRequest(f"{field}: no images")
        if len(blobs) > self.settings.max_images:
            raise PayloadTooLarge(
                f"{field}: {len(blobs)} images exceeds the limit of {self.settings.max_images}"
            )
        return [
            imaging.decode_image(b, max_pixels=self.settings.max_image_pixels, field=f"{field}[{i}]")
            for i, b in enumerate(blobs)
        ]

    async def predict(
        self,
        payload: dict | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v1(self, payload: Any) -> dict[str, Any]:
        instances = payload.get("instances") if isinstance(payload, dict) else None
        if not isinstance(instances, list) or not instances:
            raise InvalidRequest(f"instances: expected a non-empty list of {_V1_FORMS}")
        blobs = [_v1_image(item, f"instances[{i}]") for i, item in enumerate(instances)]
        answers = await self.backend.classify(self.name, self._decode(blobs, "instances"))
        return {
            "predictions": [
                {"probabilities": a.probabilities, "findings": a.findings, **a.ood_fields()} for a in answers
            ],
            "model": answers[0].model.model_dump(),
        }

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        tensor = next((i for i in request.inputs if i.name == INPUT_NAME), None)
        if tensor is None:
            raise InvalidRequest(
                f"inputs: expected a BYTES tensor named {INPUT_NAME!r}, got "
                f"{[i.name for i in request.inputs]}"
            )
        if tensor.datatype != "BYTES":
            raise InvalidRequest(f"inputs.{INPUT_NAME}: datatype must be BYTES, got {tensor.datatype}")
        try:
            raw = tensor.as_numpy().reshape(-1).tolist()
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"inputs.{INPUT_NAME}: cannot read tensor data ({exc})") from None
        # JSON (non-binary) BYTES elements arrive as str: those must be base64 of the file.
        blobs = [
            b if isinstance(b, bytes) else imaging.decode_base64(str(b), field=f"inputs.{INPUT_NAME}[{i}]")
            for i, b in enumerate(raw)
        ]
        answers = await self.backend.classify(self.name, self._decode(blobs, f"inputs.{INPUT_NAME}"))
        labels = self.predictor.info.labels
        probs = np.asarray([[a.probabilities[label] for label in labels] for a in answers], dtype=np.float32)
        output = InferOutput(
            name=OUTPUT_NAME,
            shape=list(probs.shape),
            datatype="FP32",
            parameters={"labels": ",".join(labels)},
        )
        output.set_data_from_numpy(probs, binary_data=request.use_binary_outputs)
        outputs = [output, *_ood_outputs(answers, request.use_binary_outputs)]
        stamp = answers[0].model
        return InferResponse(
            model_name=self.name,
            infer_outputs=outputs,
            response_id=request.id,
            model_version=str(stamp.version) if stamp.version is not None else None,
            # KServe's REST encoder drops model_version, so the stamp also travels in parameters.
            parameters={"alias": stamp.alias or "", "recipe": stamp.recipe, "version": str(stamp.version)},
            use_binary_outputs=request.use_binary_outputs,
        )


def _ood_outputs(answers: list, binary: bool) -> list[InferOutput]:
    """``out_of_distribution`` (BOOL ``[N]``) and ``ood_score`` (FP32 ``[N]``, threshold in its
    parameters) when the model screens its inputs; nothing for a model without a screen."""
    if any(a.out_of_distribution is None for a in answers):
        return []
    flags = np.asarray([a.out_of_distribution for a in answers], dtype=bool)
    scores = np.asarray([a.ood_score for a in answers], dtype=np.float32)
    flag_out = InferOutput(name=OOD_OUTPUT, shape=[len(answers)], datatype="BOOL")
    flag_out.set_data_from_numpy(flags, binary_data=binary)
    score_out = InferOutput(
        name=OOD_SCORE_OUTPUT,
        shape=[len(answers)],
        datatype="FP32",
        parameters={"threshold": str(answers[0].ood_threshold)},
    )
    score_out.set_data_from_numpy(scores, binary_data=binary)
    return [flag_out, score_out]


_V1_FORMS = "{'image_b64': '<base64>'} or {'image': {'b64': '<base64>'}} objects"


def _v1_image(item: Any, field: str) -> bytes:
    """The image bytes of one v1 instance: ``{"image_b64": s}`` or TF-Serving's ``{"image": {"b64": s}}``."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"{field}: expected an object, one of {_V1_FORMS}, got {type(item).__name__}")
    if "image_b64" in item and "image" in item:
        raise InvalidRequest(f"{field}: give one of 'image_b64' or 'image', not both")
    if "image_b64" in item:  # decode_base64 names the field of a non-string too
        return imaging.decode_base64(item["image_b64"], field=f"{field}.image_b64")
    if "image" not in item:
        raise InvalidRequest(f"{field}: expected one of {_V1_FORMS}, got keys {sorted(item)}")
    image = item["image"]
    if not isinstance(image, dict) or set(image) != {"b64"}:
        got = f"keys {sorted(image)}" if isinstance(image, dict) else f"a {type(image).__name__}"
        raise InvalidRequest(
            f"{field}.image: expected {{'b64': '<base64>'}} (TF-Serving binary form), got {got}"
        )
    return imaging.decode_base64(image["b64"], field=f"{field}.image.b64")


def binary_bytes_to_json(body: bytes, json_length: int) -> tuple[bytes, int | None]:
    """Rewrite binary-extension BYTES inputs of a v2 REST request as base64 strings in its JSON.

    KServe 0.21's REST decoder turns binary BYTES elements into UTF-8 text and fails (500) on image
    bytes, so ``InferInput.set_data_from_numpy(..., binary_data=True)`` could not carry images.
    Returns the new body and the new JSON length (None when no binary input remains).
    """
    try:
        header = json.loads(body[:json_length])
        offset, rest = json_length, []
        for tensor in header.get("inputs", []):
            parameters = tensor.get("parameters") or {}
            size = parameters.get("binary_data_size")
            if size is None:
                continue
            chunk, offset = body[offset : offset + int(size)], offset + int(size)
            if tensor.get("datatype") == "BYTES":
                tensor["data"] = [base64.b64encode(x).decode() for x in deserialize_bytes_tensor(chunk)]
                del parameters["binary_data_size"]
            else:
                rest.append(chunk)
    except (ValueError, TypeError, AttributeError, struct.error) as exc:
        raise InvalidRequest(f"body: malformed binary inference request ({exc})") from None
    head = json.dumps(header).encode()
    return head + b"".join(rest), (len(head) if rest else None)


class KServeGuard:
    """For KServe's own inference routes: API-key check (scope ``classify``) and binary BYTES input."""

    def __init__(self, app, *, auth: ApiKeyAuth) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and path.startswith(("/v1/models/", "/v2/models/"))
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            self.auth.check(presented_key(headers.get("authorization"), headers.get("x-api-key")), "classify")
            json_length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER.lower())
            if json_length is not None and path.endswith("/infer"):
                scope, receive = await self._rewrite_binary(scope, receive, json_length)
        except EyeopsError as exc:
            await _send_json(send, exc.http_status, error_body(exc, request_id_of(scope)))
            return
        await self.app(scope, receive, send)

    async def _rewrite_binary(self, scope, receive, json_length: str):
        if not json_length.isdigit():
            raise InvalidRequest(
                f"{INFERENCE_CONTENT_LENGTH_HEADER}: expected a byte count, got {json_length!r}"
            )
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body, new_length = binary_bytes_to_json(b"".join(chunks), int(json_length))
        drop = {b"content-length", INFERENCE_CONTENT_LENGTH_HEADER.lower().encode(), b"content-type"}
        new_headers = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
        new_headers.append((b"content-length", str(len(body)).encode()))
        if new_length is None:
            new_headers.append((b"content-type", b"application/json"))
        else:
            new_headers += [
                (b"content-type", b"application/octet-stream"),
                (INFERENCE_CONTENT_LENGTH_HEADER.lower().encode(), str(new_length).encode()),
            ]
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return {**scope, "headers": new_headers}, replay


def serve_kserve(
    model_ref: str, *, http_port: int, settings: ServeSettings, device: str | None = None
) -> None:
    """Load the model and run ``kserve.ModelServer`` (v1, v2 and the gateway routes) until stopped."""
    # kserve parses sys.argv at import time; our CLI options must not be mistaken for its own.
    sys.argv = sys.argv[:1]
    import kserve
    from kserve.model_server import app as kserve_app

    from eyeops.serve.gateway import install
    from eyeops.serve.limits import GuardMiddleware, configure_logging
    from eyeops.serve.predictor import load_predictor

    configure_logging()
    # Loaded on the compute thread, which then runs every model call (eyeops.compute).
    predictor = compute.call(load_predictor, model_ref, device=device, max_batch_size=settings.max_batch_size)
    backend = InferenceBackend(
        [predictor],
        max_batch_size=settings.max_batch_size,
        batch_wait_timeout_s=settings.batch_wait_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        threads=settings.inference_threads,
    )
    model = EyeopsKServeModel(predictor.name, backend, settings)
    install(kserve_app, backend, settings)
    # Middleware order (outermost last): guard (request id, body limit) wraps the auth check.
    kserve_app.user_middleware = [m for m in kserve_app.user_middleware if m.cls is not GuardMiddleware]
    kserve_app.add_middleware(KServeGuard, auth=kserve_app.state.eyeops_auth)
    kserve_app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)
    kserve.ModelServer(http_port=http_port, enable_grpc=False, workers=1, enable_latency_logging=False).start(
        [model]
    )
