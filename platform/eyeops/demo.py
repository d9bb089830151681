"""``eyeops demo``: the platform's main job on this machine, end to end, in a few minutes.

Runs the fine-tuning pipeline locally (kfp.local) for ``fundus-classifier`` — synthetic fundus
dataset → Ray Train → evaluation → MLflow registry + gate → local serving — then sends the real
fundus photograph that ships with scikit-image through the endpoint, prints the answer and where to
look, and stops the serving process it started.
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict
from rich.console import Console

from eyeops.config import get_settings
from eyeops.data.schema import ODIR_LABEL_NAMES
from eyeops.errors import InvalidRequest, ModelNotReady
from eyeops.pipeline import PipelineSummary, run_local, summary_table
from eyeops.recipes import load_recipe
from eyeops.refs import Endpoint, ModelVersionRef

DEMO_RECIPE = "fundus-classifier"


class DemoResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    summary: PipelineSummary
    endpoint: Endpoint
    answer: dict[str, Any]
    duration_s: float


def retina_png() -> bytes:
    """skimage.data.retina() — a real colour fundus photograph (CC0) — encoded as PNG."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.retina()).save(buffer, format="PNG")
    return buffer.getvalue()


def _champion_endpoint(summary: PipelineSummary) -> tuple[Endpoint, bool]:
    """The endpoint the pipeline deployed, or (gate failed: e.g. a rerun tying the champion) the champion
    served now. The bool says whether this function started it."""
    if summary.endpoint is not None:
        return summary.endpoint, False
    from eyeops.registry import CHAMPION, show
    from eyeops.serve.local import deploy

    recipe = load_recipe(DEMO_RECIPE)
    view = show(recipe.register.model_name)
    version = view.aliases.get(CHAMPION)
    if version is None:
        raise ModelNotReady(
            f"the gate kept {recipe.register.model_name!r} out and there is no @champion to serve"
        )
    info = next(v for v in view.versions if v.version == version)
    ref = ModelVersionRef(
        name=view.name,
        version=version,
        alias="champion",
        run_id=info.run_id,
        model_uri=f"models:/{view.name}/{version}",
        gate_passed=True,
        gate_reason="current champion",
        metric=info.metric,
        value=info.value if info.value is not None else float("nan"),
    )
    return deploy(recipe, ref, backend="local"), True


def classify(endpoint: Endpoint, image: bytes, api_key: str | None) -> dict[str, Any]:
    """POST one image to ``/v1/classify``; the JSON answer (model stamp + per-label results)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(
        f"{endpoint.url}/v1/classify",
        json={"image_b64": base64.b64encode(image).decode()},
        headers=headers,
        timeout=120,
    )
    if response.status_code != 200:
        raise InvalidRequest(
            f"{endpoint.url}/v1/classify answered {response.status_code}: {response.text[:300]}"
        )
    return response.json()


def run_demo(
    *, n: int | None = None, keep_serving: bool = False, console: Console | None = None
) -> DemoResult:
    """Run the demo; returns what it did (the CLI prints as it goes)."""
    from eyeops.pipeline.local import ensure_api_key, local_key_file
    from eyeops.serve.local import stop

    console = console or Console()
    start = time.perf_counter()
    settings = get_settings()
    # A kept key file (not a key in this process only): a --keep-serving endpoint stays callable.
    key_file = local_key_file()
    local_key = ensure_api_key(key_file)
    api_key = local_key or os.environ.get("EYEOPS_API_KEY")
    console.rule("[bold]eyeops demo[/bold]: fundus-classifier, everything on this machine")
    console.print(f"storage root: {settings.storage_root}")
    with console.status("pipeline: prepare → train (Ray) → evaluate → register (MLflow) → deploy …"):
        summary = run_local(DEMO_RECIPE, overrides={"data.n": n} if n else None, quiet=True)
    console.print(summary_table(summary))
    endpoint, _ = _champion_endpoint(summary)
    try:
        answer = classify(endpoint, retina_png(), api_key)
        _print_answer(console, answer)
        console.rule("where to look")
        console.print(f"MLflow UI:    mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000")
        console.print(
            f"endpoint:     {endpoint.url}  (POST /v1/classify, /v1/chat/completions; GET /v1/models)"
        )
        console.print(f"pipeline run: {summary.pipeline_root}/{summary.pipeline_run}")
        console.print(f"task logs:    {summary.log}")
        if local_key:
            console.print(f"API key:      {key_file} (Authorization: Bearer <the part before ':'>)")
        if summary.version:
            v = summary.version
            console.print(f"registry:     {v.name} v{v.version} @{v.alias}: {v.gate_reason}")
    finally:
        if not keep_serving:
            stop(endpoint.model_name)
    if keep_serving:
        console.print(f"still serving at {endpoint.url} (pid {endpoint.pid}); stop it: eyeops serve stop")
    duration = time.perf_counter() - start
    console.print(
        f"[green]done in {duration:.0f}s[/green]" + ("" if keep_serving else "; serving process stopped")
    )
    return DemoResult(summary=summary, endpoint=endpoint, answer=answer, duration_s=round(duration, 1))


def _print_answer(console: Console, answer: dict[str, Any]) -> None:
    stamp, result = answer["model"], answer["results"][0]
    console.rule("skimage.data.retina() → /v1/classify")
    alias = f" @{stamp['alias']}" if stamp.get("alias") else ""
    console.print(
        f"answered by {stamp['name']} v{stamp.get('version')}{alias} (recipe {stamp.get('recipe')})"
    )
    if result.get("out_of_distribution"):  # the model's screen: unlike its training images
        console.print(
            f"[bold]{result['message']}[/bold]: no findings "
            f"(out-of-distribution score {result['ood_score']:.3f} > threshold {result['ood_threshold']:.3f})"
        )
    else:
        for item in result["top"]:
            name = ODIR_LABEL_NAMES.get(item["label"], item["label"])
            console.print(f"  {item['label']} {name:<34} {item['probability']:.3f}")
        findings = ", ".join(result["findings"]) or "none above threshold"
        console.print(f"findings: {findings}")
    console.print(
        "[dim](a classifier trained for a minute on synthetic images: a demonstration, not a diagnosis)[/dim]"
    )
