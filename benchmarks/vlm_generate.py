"""VLM generation throughput: the InferenceModel path (what the servers call) vs plain
``model.generate`` on the same model, the same prompt embeddings and the same run.

    .venv/bin/python benchmarks/vlm_generate.py [--recipe eye-vlm] [--new-tokens 32] [--batch 8]
    EYEOPS_API_KEY=... .venv/bin/python benchmarks/vlm_generate.py --model models:/eyeops-eye-vlm/1 \
        --endpoint http://127.0.0.1:PORT

Prints tokens/s of both and their ratio (goal >= 0.9: our batching, prompt building and image
encoding should cost little next to decoding). Uses the real fundus photograph from scikit-image.
``--model`` loads a registered model (or model dir) instead of an untrained one from the recipe;
``--endpoint`` adds the served model (the same one: pass the same ``--model``) through
``POST /v1/chat/completions`` with the photograph as a data URL, one request and ``--batch``
concurrent clients, against plain ``generate`` at batch 1 and ``--batch``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="eye-vlm")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default=None, help="registered model (models:/NAME/V) or model dir")
    parser.add_argument("--endpoint", default=None, help="gateway base URL serving the same model")
    parser.add_argument("--model-name", default="eyeops-eye-vlm")
    args = parser.parse_args()

    import torch
    from PIL import Image
    from skimage import data

    import eyeops.data  # noqa: F401 - import order: the data package before recipes
    from eyeops.data.schema import Message
    from eyeops.inference import GenerationRequest
    from eyeops.models.vlm.family import FAMILY
    from eyeops.recipes import load_recipe

    torch.manual_seed(0)
    if args.model:
        from eyeops.serve.predictor import load_predictor

        predictor = load_predictor(args.model).model
    else:
        recipe = load_recipe(args.recipe)
        with tempfile.TemporaryDirectory() as tmp:
            FAMILY.save(FAMILY.build_model(recipe), recipe, Path(tmp))
            predictor = FAMILY.load(Path(tmp))
    retina = Image.fromarray(data.retina())
    question = Message(role="user", content="<image>\nDescribe this fundus photograph.")
    requests = [GenerationRequest(messages=[question], images=[retina], max_new_tokens=args.new_tokens)]

    def ours(batch: int) -> float:
        start = time.perf_counter()
        results = predictor.generate(requests * batch)
        return sum(r.completion_tokens for r in results) / (time.perf_counter() - start)

    def plain(batch: int) -> float:
        inputs = predictor._inputs(requests * batch)  # same embeddings, built outside the timing
        start = time.perf_counter()
        with torch.no_grad():
            out = predictor.model.lm.generate(
                **inputs,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=predictor.tokenizer.pad_token_id,
                eos_token_id=list(predictor._eos),  # stop where the served model stops
            )
        elapsed = time.perf_counter() - start
        eos = set(predictor._eos)
        tokens = sum(next((i for i, t in enumerate(row.tolist()) if t in eos), len(row)) for row in out)
        return tokens / elapsed

    ours(1), plain(1)  # warm-up
    for batch in (1, args.batch):
        a, b = ours(batch), plain(batch)
        print(f"batch {batch}: InferenceModel {a:.1f} tok/s, plain generate {b:.1f} tok/s, ratio {a / b:.2f}")
    ratio = ours(args.batch) / plain(args.batch)
    print(f"RESULT vlm_generate recipe={args.recipe} batch={args.batch} ratio={ratio:.2f}")
    if args.endpoint:
        served = endpoint_rates(args.endpoint, args.model_name, retina, args.new_tokens, args.batch)
        for batch, rate in zip((1, args.batch), served, strict=True):
            base = plain(batch)
            print(
                f"endpoint, {batch} concurrent: {rate:.1f} tok/s vs plain generate batch {batch} "
                f"{base:.1f} tok/s, ratio {rate / base:.2f}"
            )


def endpoint_rates(url: str, model: str, image, tokens: int, n: int) -> tuple[float, float]:
    """Completion tokens/s of the served model: one request, then ``n`` concurrent clients."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    url_part = {"url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}
    body = {
        "model": model,
        "max_tokens": tokens,
        "temperature": 0,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": url_part},
                    {"type": "text", "text": "Describe this fundus photograph."},
                ],
            }
        ],
    }
    key = os.environ.get("EYEOPS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def one(_: int) -> int:
        resp = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=600)
        resp.raise_for_status()
        return int(resp.json()["usage"]["completion_tokens"])

    one(0)  # warm-up
    rates = []
    for clients in (1, n):
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            got = sum(pool.map(one, range(clients)))
        rates.append(got / (time.perf_counter() - start))
    return rates[0], rates[1]


if __name__ == "__main__":
    main()
