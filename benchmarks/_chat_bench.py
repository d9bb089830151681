"""The two legs every chat benchmark compares, in the same run on the same model and requests.

- plain: ONE batched ``lm.generate`` over all requests (greedy, the model's stop ids), its inputs
  built before the clock starts -- the strongest plain baseline (no prompt rendering, image
  decoding or encoding inside the timing; never a loop of single requests);
- served: the same requests as concurrent ``POST /v1/chat/completions`` against ``eyeops serve
  --backend local`` (a separate process; the recipe's batch window), so everything a client pays
  is timed: HTTP, JSON, image decoding, preprocessing and encoding, the MicroBatcher, decoding.

Both count completion tokens the way the served answer does (up to and including the stop token).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run(recipe_name: str, model_ref: str | None, requests: Sequence[Any], bodies: Sequence[dict]) -> float:
    """Serve ``model_ref`` (default: the recipe's model built untrained) and :func:`compare` the legs."""
    import torch

    from eyeops.families import get_family
    from eyeops.recipes import load_recipe
    from eyeops.serve.predictor import load_predictor

    torch.manual_seed(0)
    recipe = load_recipe(recipe_name)
    with tempfile.TemporaryDirectory() as tmp:
        if model_ref is None:
            family = get_family(recipe.family)
            family.save(family.build_model(recipe), recipe, Path(tmp))
        ref = model_ref or tmp
        predictor = load_predictor(ref).model
        print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}")
        ratio = compare(f"{recipe_name} ({ref})", predictor, ref, recipe.serve, requests, bodies)
        print(f"load average after: {os.getloadavg()}")
    return ratio


def plain_batched(predictor: Any, requests: Sequence[Any]) -> tuple[int, float]:
    """(completion tokens, seconds) of ONE ``lm.generate`` over ``requests`` on prebuilt inputs."""
    import torch

    inputs = predictor.inputs(requests)
    limit = max(predictor.token_limit(r) for r in requests)
    start = time.perf_counter()
    with torch.inference_mode(), predictor.decoding(requests):  # HealthGPT: each row's adapter
        out = predictor.lm.generate(
            **inputs,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=limit,
            pad_token_id=int(predictor.tokenizer.pad_token_id),
            eos_token_id=predictor.stop_ids,
            **predictor.constraints(requests),
        )
    seconds = time.perf_counter() - start
    if "input_ids" in inputs:
        out = out[:, inputs["input_ids"].shape[1] :]
    tokens = 0
    for row, request in zip(out.tolist(), requests, strict=True):
        row = row[: request.max_new_tokens]
        cut = next((i for i, t in enumerate(row) if t in predictor.stop_ids), None)
        tokens += len(row) if cut is None else cut + 1
    return tokens, seconds


@contextlib.contextmanager
def local_server(model_ref: str, serve_spec: Any) -> Iterator[str]:
    """``eyeops serve --backend local`` on a free port (auth off), the recipe's batching; its URL."""
    from eyeops.serve.local import free_port

    port = free_port()
    env = dict(os.environ)
    env.setdefault("EYEOPS_MAX_BATCH_SIZE", str(serve_spec.max_batch_size))
    env.setdefault("EYEOPS_BATCH_WAIT_TIMEOUT_S", str(serve_spec.batch_wait_timeout_s))
    env.setdefault("EYEOPS_STORAGE_ROOT", tempfile.mkdtemp(prefix="bench-root-"))
    log_path = Path(tempfile.mkdtemp(prefix="bench-server-")) / "server.log"
    args = ["serve", "--backend", "local", "--model", model_ref, "--port", str(port), "--insecure-no-auth"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "eyeops", *args], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def model_calls(url: str) -> tuple[float, float]:
    """(model calls, items) so far, from the server's ``eyeops_batch_size`` histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "eyeops_batch_size"]
    values = {s.name: s.value for s in family.samples}
    return values.get("eyeops_batch_size_count", 0.0), values.get("eyeops_batch_size_sum", 0.0)


def served_concurrently(url: str, bodies: Sequence[dict]) -> tuple[int, float]:
    """(completion tokens, seconds) of ``bodies`` posted by one thread each, released together."""
    tokens = [0] * len(bodies)
    barrier = threading.Barrier(len(bodies) + 1)

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            response = http.post(url + "/v1/chat/completions", json=bodies[i])
        response.raise_for_status()
        tokens[i] = int(response.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(tokens), time.perf_counter() - start


def compare(
    label: str,
    predictor: Any,
    model_ref: str,
    serve_spec: Any,
    requests: Sequence[Any],
    bodies: Sequence[dict],
) -> float:
    """Warm both legs, then ``repeats`` rounds of each; prints medians and returns served/plain."""
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    with local_server(model_ref, serve_spec) as url:
        name = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        bodies = [{**b, "model": name} for b in bodies]
        served_concurrently(url, bodies)  # warm-up (allocator, kernels, a first full batch)
        plain_batched(predictor, requests)
        plain, served, direct = [], [], []
        calls_before = model_calls(url)
        for _ in range(repeats):
            plain.append(plain_batched(predictor, requests))
            served.append(served_concurrently(url, bodies))
            direct.append(_in_process(predictor, requests))
        calls, items = (a - b for a, b in zip(model_calls(url), calls_before, strict=True))
    plain_rate = statistics.median(t / s for t, s in plain)
    served_rate = statistics.median(t / s for t, s in served)
    ratio = served_rate / plain_rate
    direct_rate = statistics.median(t / s for t, s in direct)
    n = len(requests)
    print(
        f"{label}: {n} concurrent via the endpoint {served_rate:.1f} tok/s "
        f"(median of {repeats}; tokens {[t for t, _ in served]}, {calls:.0f} model calls for {items:.0f} "
        f"requests) vs ONE plain batched generate of {n} {plain_rate:.1f} tok/s (tokens "
        f"{[t for t, _ in plain]}): ratio {ratio:.2f}x; in-process model.generate of {n} (no serving) "
        f"{direct_rate:.1f} tok/s, {direct_rate / plain_rate:.2f}x"
    )
    return ratio


def _in_process(predictor: Any, requests: Sequence[Any]) -> tuple[int, float]:
    """(completion tokens, seconds) of the model's own ``generate(requests)``: inputs built inside."""
    start = time.perf_counter()
    results = predictor.generate(requests)
    return sum(r.completion_tokens for r in results), time.perf_counter() - start
