"""VLM generation throughput: the InferenceModel path (what the servers call) vs plain
``model.generate`` on the same model, the same prompt embeddings and the same run.

    .venv/bin/python benchmarks/vlm_generate.py [--recipe eye-vlm] [--new-tokens 32] [--batch 8]

Prints tokens/s of both and their ratio (goal >= 0.9: our batching, prompt building and image
encoding should cost little next to decoding). Uses the real fundus photograph from scikit-image.
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
    args = parser.parse_args()

    import torch
    from PIL import Image
    from skimage import data

    import eyeops.data  # noqa: F401 - import order: the data package before recipes
    from eyeops.data.schema import Message
    from eyeops.inference import GenerationRequest
    from eyeops.models.vlm import FAMILY
    from eyeops.recipes import load_recipe

    torch.manual_seed(0)
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


if __name__ == "__main__":
    main()
