"""The Ray Serve face: an autoscaled deployment with ``@serve.batch`` and the gateway as ingress.

Each replica loads the Predictor once and builds the gateway app around itself
(``__serve_build_asgi_app__``), so the HTTP surface is identical to the local gateway while
classification and chat go through Ray's dynamic batching (concurrent chat requests become one
``model.generate`` call). Replica count follows ``recipe.serve`` (min/max replicas, target ongoing
requests); the batch window comes from :class:`~eyeops.serve.settings.ServeSettings`, which the
recipe's ``serve:`` section fills through the replica's env, as ``eyeops serve --backend local`` does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from PIL import Image
from ray import serve

from eyeops import compute
from eyeops.errors import EyeopsError, InferenceTimeout
from eyeops.inference import GenerationRequest, GenerationResult
from eyeops.recipes import ServeSpec
from eyeops.serve.batching import InferenceBackend, each_alone_on_client_error
from eyeops.serve.limits import BATCH_SIZE
from eyeops.serve.predictor import ClassifyAnswer

APP_NAME = "eyeops"
DEPLOYMENT_NAME = "EyeopsModel"
# Replicas must see the same settings and registry as the driver (keys, storage root, MLflow URI).
_FORWARDED_ENV = ("EYEOPS_", "MLFLOW_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AWS_")


class _RayBackend(InferenceBackend):
    """Classification and chat through the replica's ``@serve.batch`` methods instead of MicroBatchers."""

    def __init__(self, replica: EyeopsModel) -> None:
        s = replica.settings
        super().__init__(
            [replica.predictor],
            max_batch_size=s.max_batch_size,
            batch_wait_timeout_s=s.batch_wait_timeout_s,
            request_timeout_s=s.request_timeout_s,
        )
        self.replica = replica

    async def classify(self, name: str | None, images: Sequence[Image.Image]) -> list[ClassifyAnswer]:
        self.get(name).require("classify")
        try:
            return list(
                await asyncio.wait_for(
                    asyncio.gather(*(self.replica.classify_one(image) for image in images)),
                    self.request_timeout_s,
                )
            )
        except TimeoutError:
            raise InferenceTimeout(f"model did not answer within {self.request_timeout_s:g} s") from None

    async def generate(self, name: str | None, request: GenerationRequest) -> GenerationResult:
        self.get(name).require("chat")
        try:
            answer = await asyncio.wait_for(self.replica.generate_one(request), self.request_timeout_s)
        except TimeoutError:
            raise InferenceTimeout(f"model did not answer within {self.request_timeout_s:g} s") from None
        if isinstance(answer, EyeopsError):
            raise answer
        return answer


def _observe_batch(items: int) -> None:
    # A module function (pickled by reference): the deployment class is pickled by value, and a
    # method naming BATCH_SIZE directly would drag the metric's lock into the pickle.
    BATCH_SIZE.observe(items)


async def _on_compute(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on the replica's compute thread (eyeops.compute), awaited."""
    return await asyncio.get_running_loop().run_in_executor(compute.executor(), fn, *args)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class EyeopsModel:
    """One replica: a loaded Predictor, a batching method, and the gateway routes as ingress."""

    def __init__(self, model_ref: str, settings_overrides: dict[str, Any], device: str | None = None) -> None:
        from eyeops.serve.predictor import load_predictor
        from eyeops.serve.settings import load_serve_settings

        self.settings = s = load_serve_settings(**settings_overrides)
        # Loaded on the compute thread, which then runs every model call (eyeops.compute).
        self.predictor = compute.call(
            load_predictor, model_ref, device=device, max_batch_size=s.max_batch_size
        )
        for method in (self.classify_one, self.generate_one):
            method.set_max_batch_size(s.max_batch_size)
            method.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    # The decorator's numbers are placeholders: __init__ sets both from ServeSettings.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def classify_one(self, images: list[Image.Image]) -> list[ClassifyAnswer]:
        # The forward pass runs on the compute thread so the replica keeps accepting (and batching).
        _observe_batch(len(images))
        return await _on_compute(self.predictor.classify, images)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate_one(self, requests: list[GenerationRequest]) -> list[GenerationResult | EyeopsError]:
        """Concurrent chat requests as one ``model.generate`` call; a bad one answers alone."""
        _observe_batch(len(requests))
        return await _on_compute(each_alone_on_client_error, self.predictor.generate, requests)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from eyeops.serve.gateway import install

        return install(
            FastAPI(title="eyeops (Ray Serve)", docs_url=None, redoc_url=None),
            _RayBackend(self),
            self.settings,
        )


def build_app(
    model_ref: str,
    spec: ServeSpec,
    *,
    settings_overrides: dict[str, Any] | None = None,
    replica_cpus: float = 1.0,
):
    """The bound Ray Serve application for one model, autoscaled as ``spec`` (recipe.serve) says."""
    # Ray averages ongoing requests over look_back_period_s: keep it no longer than the upscale delay
    # so short delays (tests, bursty clinics) actually react within that delay.
    look_back = min(30.0, max(1.0, spec.upscale_delay_s))
    autoscaling = {
        "min_replicas": spec.min_replicas,
        "max_replicas": spec.max_replicas,
        "target_ongoing_requests": spec.target_ongoing_requests,
        "upscale_delay_s": spec.upscale_delay_s,
        "downscale_delay_s": spec.downscale_delay_s,
        "look_back_period_s": look_back,
        "metrics_interval_s": min(10.0, look_back / 2),
    }
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
    # The recipe's batching applies unless the environment sets it (as eyeops.serve.local does).
    env.setdefault("EYEOPS_MAX_BATCH_SIZE", str(spec.max_batch_size))
    env.setdefault("EYEOPS_BATCH_WAIT_TIMEOUT_S", str(spec.batch_wait_timeout_s))
    deployment = EyeopsModel.options(
        autoscaling_config=autoscaling,
        max_ongoing_requests=max(2 * spec.max_batch_size, int(spec.target_ongoing_requests * 2)),
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": spec.gpus, "runtime_env": {"env_vars": env}},
    )
    # serve.device auto lets the saved recipe (then EYEOPS_DEVICE) choose; otherwise it is explicit.
    return deployment.bind(
        model_ref, settings_overrides or {}, None if spec.device == "auto" else spec.device
    )


def replica_count() -> int:
    """Running replicas of the model deployment (for tests and ``eyeops serve`` status lines)."""
    status = serve.status().applications.get(APP_NAME)
    if status is None:
        return 0
    deployment = status.deployments.get(DEPLOYMENT_NAME)
    return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))


def run_ray(
    model_ref: str,
    spec: ServeSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings_overrides: dict[str, Any] | None = None,
    blocking: bool = True,
    replica_cpus: float = 1.0,
) -> str:
    """Start Ray (local, or ``EYEOPS_RAY_ADDRESS``) and Serve, deploy the model; returns the URL."""
    import ray

    from eyeops.config import get_settings

    if not ray.is_initialized():
        address = get_settings().ray_address
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build_app(model_ref, spec, settings_overrides=settings_overrides, replica_cpus=replica_cpus),
        name=APP_NAME,
        route_prefix="/",
    )
    url = f"http://{host}:{port}"
    while blocking:
        time.sleep(3600)
    return url
