"""``eyeops serve`` (local | kserve | ray), ``eyeops serve stop``, and ``eyeops predict IMAGE``."""

from __future__ import annotations

import base64
import json
import os
from enum import StrEnum
from pathlib import Path

import typer

from eyeops.errors import EyeopsError, InvalidRequest, NotFoundError

DEVICE_OPTION_HELP = (
    "auto | cpu | cuda | cuda:N | mps; default: the model's recipe serve.device, then EYEOPS_DEVICE."
)

serve_app = typer.Typer(
    help="Serve a registered model (gateway, KServe or Ray Serve).",
    invoke_without_command=True,
    no_args_is_help=False,
)


class BackendChoice(StrEnum):
    local = "local"
    kserve = "kserve"
    ray = "ray"


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    model: str = typer.Option(
        None, "--model", "-m", help="NAME[@alias], NAME/VERSION, models:/… or a model dir."
    ),
    backend: BackendChoice = typer.Option(BackendChoice.local, "--backend", "-b", help="Serving face."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (local and ray backends)."),
    port: int = typer.Option(8000, "--port", "-p", help="HTTP port."),
    recipe: str = typer.Option(None, help="Recipe whose serve: section sets Ray autoscaling (ray backend)."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve WITHOUT API-key auth (local development only)."
    ),
    device: str = typer.Option(None, "--device", help=DEVICE_OPTION_HELP),
) -> None:
    """Serve MODEL until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    if not model:
        raise InvalidRequest("--model is required (NAME[@alias], NAME/VERSION or a model directory)")
    from eyeops.serve.settings import load_serve_settings

    settings = load_serve_settings(**({"auth_disabled": True} if insecure_no_auth else {}))
    if backend is BackendChoice.local:
        from eyeops.serve.local import serve_gateway

        serve_gateway(model, host=host, port=port, settings=settings, device=device)
    elif backend is BackendChoice.kserve:
        from eyeops.serve.kserve_model import serve_kserve

        serve_kserve(model, http_port=port, settings=settings, device=device)
    else:
        from eyeops.recipes import ServeSpec, load_recipe
        from eyeops.serve.ray_app import run_ray

        spec = load_recipe(recipe).serve if recipe else ServeSpec()
        if device is not None:
            spec = _with_device(spec, device)
        typer.echo(
            f"Ray Serve: {model} on http://{host}:{port} ({spec.min_replicas}-{spec.max_replicas} replicas)"
        )
        run_ray(
            model,
            spec,
            host=host,
            port=port,
            settings_overrides={"auth_disabled": True} if insecure_no_auth else None,
        )


def _with_device(spec, device: str):
    """``spec`` loading on ``device`` (validated again: the GPUs per replica follow the device)."""
    from eyeops.recipes import ServeSpec

    fields = spec.model_dump(exclude={"gpu"} if spec.gpu == 0 else set())
    try:
        return ServeSpec.model_validate({**fields, "device": device})
    except ValueError as exc:
        raise InvalidRequest(f"--device {device!r}: {exc}") from None


@serve_app.command("stop")
def stop(model: str = typer.Argument(None, help="Model name; default: every local endpoint.")) -> None:
    """Stop locally deployed endpoints recorded under the storage root."""
    from eyeops.serve.local import stop as stop_endpoints

    stopped = stop_endpoints(model)
    for endpoint in stopped:
        typer.echo(
            f"stopped {endpoint.model_name} v{endpoint.version} at {endpoint.url} (pid {endpoint.pid})"
        )
    if not stopped:
        typer.echo("no local endpoints running")


def predict(
    image: Path = typer.Argument(..., exists=False, help="Image file: JPEG, PNG, TIFF or DICOM."),
    question: str = typer.Option(None, "--question", "-q", help="Ask a chat-capable model about the image."),
    url: str = typer.Option(None, "--url", help="A running endpoint (e.g. http://127.0.0.1:8000)."),
    model: str = typer.Option(
        None, "--model", "-m", help="Model to load in-process when --url is not given."
    ),
    api_key: str = typer.Option(None, "--api-key", envvar="EYEOPS_API_KEY", help="Key for --url."),
    max_tokens: int = typer.Option(128, help="Longest answer for --question."),
    device: str = typer.Option(None, "--device", help=DEVICE_OPTION_HELP),
) -> None:
    """Classify IMAGE (or ask --question about it) via an endpoint or an in-process model."""
    if not image.is_file():
        raise NotFoundError(f"image {image}: file not found")
    data = image.read_bytes()
    if url:
        result = _remote(url.rstrip("/"), data, question, model, api_key, max_tokens)
    else:
        if not model:
            raise InvalidRequest("give --url of a running endpoint or --model to load in-process")
        result = _in_process(model, data, question, max_tokens, device)
    typer.echo(json.dumps(result, indent=2))


def _remote(
    url: str, data: bytes, question: str | None, model: str | None, api_key: str | None, max_tokens: int
) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    b64 = base64.b64encode(data).decode()
    if question:
        body = {
            "model": model or "default",
            "max_tokens": max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:application/octet-stream;base64,{b64}"},
                        },
                        {"type": "text", "text": question},
                    ],
                }
            ],
        }
        route = "/v1/chat/completions"
    else:
        body, route = ({"image_b64": b64} | ({"model": model} if model else {})), "/v1/classify"
    try:
        response = httpx.post(url + route, json=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise EyeopsError(f"{url}: cannot reach endpoint ({exc})") from None
    payload = response.json()
    if response.status_code >= 400:
        error = payload.get("error", {})
        raise InvalidRequest(
            f"{url}{route}: {response.status_code} {error.get('code')}: {error.get('message')}"
        )
    return payload


def _in_process(model: str, data: bytes, question: str | None, max_tokens: int, device: str | None) -> dict:
    from eyeops.data.schema import IMAGE_TOKEN, Message
    from eyeops.inference import GenerationRequest
    from eyeops.serve.images import decode_image
    from eyeops.serve.predictor import load_predictor
    from eyeops.serve.settings import ServeSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    predictor = load_predictor(model, device=device)
    pixels = decode_image(data, max_pixels=ServeSettings(auth_disabled=True).max_image_pixels)
    if question:
        request = GenerationRequest(
            messages=[Message(role="user", content=f"{IMAGE_TOKEN}\n{question}")],
            images=[pixels],
            max_new_tokens=max_tokens,
        )
        answer = predictor.generate([request])[0]
        return {"answer": answer.text, **answer.ood_fields(), "model": predictor.stamp.model_dump()}
    result = predictor.classify([pixels])[0]
    return result.model_dump()


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
    app.command("predict")(predict)
