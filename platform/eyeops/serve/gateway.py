"""The inference gateway: FastAPI routes every serving face mounts.

``create_app(predictors, settings)`` builds a standalone app (local deploy, benchmarks);
``install(app, backend, settings)`` adds the same routes, error handlers and guards to an existing
FastAPI app — KServe's ModelServer app and the Ray Serve ingress both use it. Errors are mapped to
HTTP once, from :class:`EyeopsError.http_status`, into ``{"error": {code, message, request_id}}``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from eyeops import compute
from eyeops.data.schema import IMAGE_TOKEN, Message
from eyeops.errors import EyeopsError, InvalidRequest, ModelNotReady, PayloadTooLarge
from eyeops.inference import GenerationRequest, GenerationResult, ScreensImages
from eyeops.serve import images as imaging
from eyeops.serve.auth import ApiKeyAuth, Scope, presented_key
from eyeops.serve.batching import InferenceBackend
from eyeops.serve.limits import GuardMiddleware, error_body, request_id_of
from eyeops.serve.predictor import Predictor
from eyeops.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ClassifyItem,
    ClassifyRequest,
    ClassifyResponse,
    Delta,
    ErrorResponse,
    ImagePart,
    ImageURL,
    LabelScore,
    ModelCard,
    ModelList,
    OODVerdict,
    TextPart,
    Usage,
)
from eyeops.serve.settings import ServeSettings
from eyeops.serve.ui import mount_ui

log = logging.getLogger("eyeops.serve")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key (alternative header)")
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503, 504)}
_CLASSIFY_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ClassifyRequest.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "model": {"type": "string", "maxLength": 200},
                },
            }
        },
    },
}


def _auth_dependency(scope: Scope | None):
    """A route dependency: any valid key (scope None) or one holding ``scope``."""

    async def check(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        key: str | None = Depends(_api_key),
    ) -> str:
        auth: ApiKeyAuth = request.app.state.eyeops_auth
        token = presented_key(f"Bearer {bearer.credentials}" if bearer else None, key)
        return auth.check(token, scope or "classify") if scope else _any_scope(auth, token)

    return check


def _any_scope(auth: ApiKeyAuth, token: str | None) -> str:
    from eyeops.errors import Forbidden

    for scope in ("classify", "chat", "admin"):
        try:
            return auth.check(token, scope)  # type: ignore[arg-type]
        except Forbidden:
            continue
    raise Forbidden("API key has no scope")


def _backend(request: Request) -> InferenceBackend:
    backend: InferenceBackend | None = getattr(request.app.state, "eyeops_backend", None)
    if backend is None or not backend.ready:
        raise ModelNotReady("model is still loading")
    return backend


def _served_name(backend: InferenceBackend, requested: str | None) -> str | None:
    """Accept 'name', 'name@alias' or 'name/3' for a served model."""
    if requested is None or requested in backend.predictors:
        return requested
    return requested.split("@", 1)[0].split("/", 1)[0]


_ALIAS_OR_VERSION = re.compile(r"(?P<name>.+?)(?:@[A-Za-z0-9_-]+|/\d+)")


def _served_match(backend: InferenceBackend, ref: str) -> str | None:
    """The served name ``ref`` denotes as 'name', 'name@alias' or 'name/3'; None if none."""
    if ref in backend.predictors:
        return ref
    match = _ALIAS_OR_VERSION.fullmatch(ref)
    return match["name"] if match and match["name"] in backend.predictors else None


def _chat_target(backend: InferenceBackend, body: ChatCompletionRequest) -> tuple[Predictor, str | None]:
    """(predictor, task) from ``model`` ('name[@alias|/N][:task]') and ``eyeops_task``; 4xx if they clash.

    A served name that itself matches wins over reading a ':task' suffix off it.
    """
    name, suffix = _served_match(backend, body.model), None
    if name is None and ":" in body.model:
        head, tail = body.model.rsplit(":", 1)
        name = _served_match(backend, head)
        suffix = tail if name is not None else None
    predictor = backend.get(name or _served_name(backend, body.model.split(":", 1)[0]))
    if suffix is not None and body.eyeops_task is not None and suffix != body.eyeops_task:
        raise InvalidRequest(
            f"model suffix task {suffix!r} (model {body.model!r}) and eyeops_task {body.eyeops_task!r} "
            "disagree: give one, or the same in both"
        )
    return predictor, predictor.resolve_task(suffix if suffix is not None else body.eyeops_task)


def _answer_content(result: GenerationResult) -> str | list[TextPart | ImagePart]:
    """Text as a string; with images, OpenAI content parts (text first, then one data: URL per PNG)."""
    if not result.images_png:
        return result.text
    parts: list[TextPart | ImagePart] = [TextPart(type="text", text=result.text)] if result.text else []
    for png in result.images_png:
        url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(ImagePart(type="image_url", image_url=ImageURL(url=url)))
    return parts


async def _decode_all(blobs: Sequence[bytes], settings: ServeSettings, field: str) -> list[Image.Image]:
    if len(blobs) > settings.max_images:
        raise PayloadTooLarge(f"{field}: {len(blobs)} images exceeds the limit of {settings.max_images}")
    return [
        await run_in_threadpool(
            imaging.decode_image, blob, max_pixels=settings.max_image_pixels, field=f"{field}[{i}]"
        )
        for i, blob in enumerate(blobs)
    ]


async def _classify_inputs(request: Request) -> tuple[str | None, list[bytes], str]:
    """(model, image blobs, field name) from a JSON or multipart body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=64, max_fields=16)
        except Exception as exc:  # python-multipart/starlette parse errors are client mistakes
            raise InvalidRequest(f"body: malformed multipart form ({exc})") from None
        files = [f for f in form.getlist("image") if isinstance(f, UploadFile)]
        if not files:
            raise InvalidRequest("image: multipart form needs at least one file field named 'image'")
        model = form.get("model")
        return (model if isinstance(model, str) else None), [await f.read() for f in files], "image"
    if content_type not in ("application/json", ""):
        raise InvalidRequest(f"content-type {content_type!r}: send application/json or multipart/form-data")
    try:
        payload = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    try:
        body = ClassifyRequest.model_validate(payload)
    except ValueError as exc:
        raise RequestValidationError(getattr(exc, "errors", lambda: [])()) from None
    field = "image_b64" if body.image_b64 is not None else "images_b64"
    blobs = [imaging.decode_base64(text, field=f"{field}[{i}]") for i, text in enumerate(body.encoded)]
    return body.model, blobs, field


def _to_generation(body: ChatCompletionRequest) -> tuple[list[Message], list[bytes]]:
    """OpenAI messages → our messages with ``<image>`` placeholders + the image bytes, in order."""
    messages, blobs = [], []
    for m_index, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        if isinstance(message.content, str):
            messages.append(Message(role=role, content=message.content))
            continue
        pieces = []
        for p_index, part in enumerate(message.content):
            if part.type == "text":
                pieces.append(part.text)
            else:
                field = f"messages[{m_index}].content[{p_index}].image_url.url"
                blobs.append(imaging.decode_data_url(part.image_url.url, field=field))
                pieces.append(IMAGE_TOKEN)
        messages.append(Message(role=role, content="\n".join(pieces)))
    return messages, blobs


def build_router() -> APIRouter:
    """The gateway routes (state comes from ``app.state``, set by :func:`install`)."""
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz", tags=["health"], responses={503: {"model": ErrorResponse}})
    async def readyz(request: Request) -> dict[str, str]:
        _backend(request)
        return {"status": "ready"}

    @router.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/models",
        tags=["models"],
        response_model=ModelList,
        responses=_ERRORS,
        dependencies=[Depends(_auth_dependency(None))],
    )
    async def list_models(request: Request) -> ModelList:
        backend = _backend(request)
        cards = [
            ModelCard(
                id=p.name,
                name=p.name,
                version=p.info.version,
                alias=p.info.alias,
                recipe=p.info.recipe,
                family=p.info.family,
                capabilities=p.info.capabilities,
                labels=p.info.labels,
                tasks=p.info.tasks,
                default_task=p.info.default_task,
            )
            for p in backend.predictors.values()
        ]
        return ModelList(data=cards, models=[c.id for c in cards])

    @router.post(
        "/v1/classify",
        tags=["inference"],
        response_model=ClassifyResponse,
        responses=_ERRORS,
        openapi_extra={"requestBody": _CLASSIFY_BODY},
        dependencies=[Depends(_auth_dependency("classify"))],
    )
    async def classify(request: Request) -> ClassifyResponse:
        backend = _backend(request)
        settings: ServeSettings = request.app.state.eyeops_settings
        model, blobs, field = await _classify_inputs(request)
        name = _served_name(backend, model)
        backend.get(name).require("classify")  # fail before decoding when the model cannot classify
        images = await _decode_all(blobs, settings, field)
        answers = await backend.classify(name, images)
        items = [
            ClassifyItem(
                probabilities=a.probabilities,
                findings=a.findings,
                **a.ood_fields(),
                top=[
                    LabelScore(label=k, probability=v)
                    for k, v in sorted(a.probabilities.items(), key=lambda kv: -kv[1])[:3]
                ],
            )
            for a in answers
        ]
        return ClassifyResponse(model=answers[0].model, results=items)

    @router.post(
        "/v1/chat/completions",
        tags=["inference"],
        response_model=ChatCompletion,
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
        dependencies=[Depends(_auth_dependency("chat"))],
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        backend = _backend(request)
        settings: ServeSettings = request.app.state.eyeops_settings
        predictor, task = _chat_target(backend, body)
        name = predictor.name
        predictor.require("chat")
        predictor.check_request(task, stream=body.stream)  # 4xx now, before any SSE event is sent
        messages, blobs = _to_generation(body)
        images = await _decode_all(blobs, settings, "image_url")
        generation = GenerationRequest(
            messages=messages,
            images=images,
            temperature=body.temperature,
            top_p=body.top_p,
            max_new_tokens=body.max_completion_tokens or body.max_tokens or 128,
            task=task,
        )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        fingerprint = _fingerprint(predictor)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _sse(
                backend,
                name,
                generation,
                completion_id,
                created,
                body.model,
                fingerprint,
                request_id_of(request.scope),
                include_usage,
                await _stream_verdict(predictor, images),
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        result = await backend.generate(name, generation)
        return ChatCompletion(
            id=completion_id,
            created=created,
            model=body.model,
            system_fingerprint=fingerprint,
            choices=[
                Choice(
                    message=AssistantMessage(content=_answer_content(result)),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=Usage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
            eyeops_model=predictor.stamp,
            eyeops_task=task,
            eyeops_ood=_ood_of(result),
        )

    return router


async def _stream_verdict(predictor: Predictor, images: list[Image.Image]) -> OODVerdict | None:
    """The OOD verdict on a streamed request's images, judged before the stream starts."""
    if not images or not isinstance(predictor.model, ScreensImages):
        return None
    verdict = await run_in_threadpool(compute.call, predictor.model.screen, images)
    return None if verdict is None else OODVerdict(**verdict.answer_fields())


def _ood_of(result: GenerationResult) -> OODVerdict | None:
    if result.out_of_distribution is None:
        return None
    return OODVerdict(**result.ood_fields())


def _fingerprint(predictor: Predictor) -> str:
    info = predictor.info
    version = info.version if info.version is not None else "local"
    return f"{info.name}/{version}/{info.recipe_fingerprint[:12]}"


async def _sse(
    backend: InferenceBackend,
    name: str | None,
    generation: GenerationRequest,
    completion_id: str,
    created: int,
    model: str,
    fingerprint: str,
    request_id: str,
    include_usage: bool,
    verdict: OODVerdict | None = None,
) -> AsyncIterator[str]:
    """OpenAI chunk events; an error after the stream began is sent as an error event, then [DONE].

    The first chunk carries ``eyeops_ood`` when the request's images were screened."""

    def event(choices: list[ChunkChoice], usage: Usage | None = None, ood: OODVerdict | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=choices,
            system_fingerprint=fingerprint,
            usage=usage,
            eyeops_ood=ood,
        )
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))], ood=verdict)
    pieces = 0
    try:
        async for piece in backend.stream(name, generation):
            pieces += 1
            yield event([ChunkChoice(delta=Delta(content=piece))])
        reason = "length" if pieces >= generation.max_new_tokens else "stop"
        yield event([ChunkChoice(delta=Delta(), finish_reason=reason)])
        if include_usage:
            yield event([], Usage(prompt_tokens=0, completion_tokens=pieces, total_tokens=pieces))
    except EyeopsError as exc:
        yield f"data: {json.dumps(error_body(exc, request_id))}\n\n"
    yield "data: [DONE]\n\n"


# --- error mapping (once) -------------------------------------------------------------------------
async def _eyeops_error(request: Request, exc: EyeopsError) -> JSONResponse:
    if exc.http_status >= 500:
        log.error("%s [request %s]: %s", exc.code, request_id_of(request.scope), exc)
    return JSONResponse(error_body(exc, request_id_of(request.scope)), status_code=exc.http_status)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    rid = request_id_of(request.scope)
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse(error_body(InvalidRequest("body: not valid JSON"), rid), status_code=400)
    # Never echo the input: it may hold image bytes or identifiers.
    detail = (
        "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:10]
        )
        or "request does not match the schema"
    )
    body = {"error": {"code": "validation_error", "message": detail, "request_id": rid}}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail), "request_id": request_id_of(request.scope)}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install(app: FastAPI, backend: InferenceBackend | None, settings: ServeSettings) -> FastAPI:
    """Add the gateway routes, error handlers and guards to ``app`` (state on ``app.state``)."""
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # PIL's own guard, in addition to ours
    app.state.eyeops_settings = settings
    app.state.eyeops_auth = ApiKeyAuth.from_settings(settings)
    app.state.eyeops_backend = backend
    app.include_router(build_router())
    mount_ui(app)  # the chat page at /ui: static files calling the routes above, same auth
    app.add_exception_handler(EyeopsError, _eyeops_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.auth_disabled:
        log.warning("API-key auth is DISABLED (local development only)")
    return app


def create_app(predictors: Predictor | Sequence[Predictor], settings: ServeSettings) -> FastAPI:
    """A standalone gateway app over one or more loaded Predictors."""
    served = [predictors] if isinstance(predictors, Predictor) else list(predictors)
    backend = InferenceBackend(
        served,
        max_batch_size=settings.max_batch_size,
        batch_wait_timeout_s=settings.batch_wait_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        threads=settings.inference_threads,
    )
    app = FastAPI(title="eyeops gateway", version="1", docs_url=None, redoc_url=None)
    return install(app, backend, settings)
