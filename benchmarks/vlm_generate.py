"""Multimodal chat generation (eye-vlm, ophglm, healthgpt comprehension): 8 concurrent requests with
the retina photograph through the served endpoint vs ONE plain batched ``lm.generate`` of the same
8 on the same model, in the same run (see ``_chat_bench.py``).

    .venv/bin/python benchmarks/vlm_generate.py [--recipe eye-vlm|ophglm|healthgpt] [--new-tokens 32]
    .venv/bin/python benchmarks/vlm_generate.py --recipe eye-vlm --model models:/eyeops-eye-vlm/1

Without ``--model`` the recipe's model is built untrained by its family and saved to a temporary
directory, which ``eyeops serve --backend local`` serves with the recipe's batch window. The
endpoint gets the scikit-image retina photograph as a JPEG data URL; the plain leg gets the same
JPEG decoded, its prompt embeddings (image encoding included) built before the clock starts.
Goal: served >= 0.9x plain.
"""

from __future__ import annotations

import argparse
import base64
import io

from _chat_bench import run  # first: sets the offline env before transformers is imported

QUESTIONS = [
    "Describe this fundus photograph.",
    "Is there diabetic retinopathy? Answer yes or no.",
    "What does the optic disc look like?",
    "Write the report for this image.",
    "Are there exudates or haemorrhages?",
    "Is the macula normal?",
    "Which finding is most likely?",
    "Should this patient be referred?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", default="eye-vlm", help="a chat recipe with images: eye-vlm, ophglm, healthgpt"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default=None, help="registered model (models:/NAME/V) or model dir")
    args = parser.parse_args()

    from PIL import Image
    from skimage import data

    import eyeops.data  # noqa: F401 - import order: the data package before recipes
    from eyeops.data.schema import Message
    from eyeops.inference import GenerationRequest

    buffer = io.BytesIO()
    Image.fromarray(data.retina()).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    retina = Image.open(io.BytesIO(jpeg)).convert("RGB")  # what the server decodes
    image_url = {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.batch)]
    requests = [
        GenerationRequest(
            messages=[Message(role="user", content=f"<image>\n{q}")],
            images=[retina],
            max_new_tokens=args.new_tokens,
        )
        for q in questions
    ]
    content = [{"type": "image_url", "image_url": image_url}]
    bodies = [
        {
            "messages": [{"role": "user", "content": [*content, {"type": "text", "text": q}]}],
            "max_tokens": args.new_tokens,
            "temperature": 0,
        }
        for q in questions
    ]
    ratio = run(args.recipe, args.model, requests, bodies)
    print(f"RESULT vlm_generate recipe={args.recipe} batch={args.batch} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
