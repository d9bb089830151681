"""Classify throughput through the HTTP gateway vs raw batched forward passes, in the same run.

    python benchmarks/serve.py [--model REF] [--concurrency 1 4 16 32] [--seconds 10]

Without ``--model`` a fundus classifier is built by the classifier family (packaged ImageNet
weights, the recipe's image size) and saved to a temporary directory. The raw figure is
``Predictor.model.classify`` on decoded images in batches of ``max_batch_size`` in this process;
the HTTP figure is ``POST /v1/classify`` (base64 JPEG in JSON) against ``eyeops serve --backend
local`` in a separate process, with dynamic batching. Goal: HTTP ≥ 0.9 × raw at saturation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _build_model(out_dir: Path, image_size: int) -> str:
    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe

    recipe = parse_recipe(
        {
            "name": "bench-serve",
            "model": {"family": "classifier", "image_size": image_size},
            "register": {"model_name": "bench-serve"},
        }
    )
    family = get_family("classifier")
    family.save(family.build_model(recipe), recipe, out_dir)
    return str(out_dir)


def _image_bytes(side: int) -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.retina()).resize((side, side)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def raw_throughput(model_ref: str, jpeg: bytes, batch: int, seconds: float) -> float:
    """Images/s of batched forward passes on already-decoded images (no HTTP, no decoding)."""
    from PIL import Image

    from eyeops.serve.predictor import load_predictor

    predictor = load_predictor(model_ref, max_batch_size=batch)
    images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for _ in range(batch)]
    predictor.model.classify(images)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predictor.model.classify(images)
        done += batch
    return done / (time.perf_counter() - start)


async def _drive(url: str, body: dict, concurrency: int, seconds: float) -> tuple[float, list[float], int]:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await client.post("/v1/classify", json=body)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, errors


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="Model ref (models:/…, NAME@alias or a model dir); default: build one."
    )
    parser.add_argument("--image-size", type=int, default=224, help="Model input size when building.")
    parser.add_argument("--image-side", type=int, default=256, help="Side of the JPEG sent over HTTP.")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size (raw and dynamic batching).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="Measuring time per point.")
    args = parser.parse_args()

    from eyeops.serve.local import free_port, wait_ready

    workdir = Path(tempfile.mkdtemp(prefix="eyeops-bench-"))
    model_ref = args.model or _build_model(workdir / "model", args.image_size)
    jpeg = _image_bytes(args.image_side)
    body = {"image_b64": base64.b64encode(jpeg).decode()}

    raw = raw_throughput(model_ref, jpeg, args.batch, args.seconds)
    print(f"raw batched forward (batch {args.batch}): {raw:.1f} img/s")

    port = free_port()
    env = os.environ | {
        "EYEOPS_STORAGE_ROOT": os.environ.get("EYEOPS_STORAGE_ROOT", str(workdir / "root")),
        "EYEOPS_MAX_BATCH_SIZE": str(args.batch),
        "EYEOPS_BATCH_WAIT_TIMEOUT_S": "0.005",
    }
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eyeops",
            "serve",
            "--backend",
            "local",
            "--model",
            model_ref,
            "--port",
            str(port),
            "--insecure-no-auth",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, timeout_s=300)
        asyncio.run(_drive(url, body, 2, 2.0))  # warm-up
        print(f"{'concurrency':>11} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'vs raw':>7}")
        best = 0.0
        for concurrency in args.concurrency:
            rate, latencies, errors = asyncio.run(_drive(url, body, concurrency, args.seconds))
            best = max(best, rate)
            print(
                f"{concurrency:>11} {rate:>8.1f} {_percentile(latencies, 50) * 1000:>8.1f} "
                f"{_percentile(latencies, 99) * 1000:>8.1f} {errors:>6} {rate / raw:>7.2f}"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    print(
        f"RESULT serve: raw={raw:.1f} img/s http_saturated={best:.1f} img/s ratio={best / raw:.2f} "
        f"(goal >= 0.90) batch={args.batch} image={args.image_side}px cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
