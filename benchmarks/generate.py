"""eye-llm generation: 8 concurrent chat requests through the served endpoint vs ONE plain batched
``model.generate`` of the same 8 on the same model, in the same run (see ``_chat_bench.py``).

    .venv/bin/python benchmarks/generate.py [--recipe eye-llm] [--tokens 32]
    .venv/bin/python benchmarks/generate.py --model models:/eyeops-eye-llm/1

Without ``--model`` the recipe's model is built untrained (the packaged SmolLM2-135M-Instruct, LoRA
initialised to a no-op) and saved to a temporary directory; ``eyeops serve --backend local`` serves
that directory with the recipe's batch window. Goal: served >= 0.9x plain.
"""

from __future__ import annotations

import argparse

from _chat_bench import run  # first: sets the offline env before transformers is imported

PROMPTS = [
    "What is glaucoma?",
    "How is diabetic retinopathy screened?",
    "What are the symptoms of a cataract?",
    "What is the first-line treatment of wet macular degeneration?",
    "Why does high myopia raise the risk of retinal detachment?",
    "What does a cherry-red spot at the macula suggest?",
    "How is intraocular pressure measured?",
    "What lifestyle advice helps people with dry eye?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="eye-llm")
    parser.add_argument("--model", default=None, help="a registered model (models:/NAME/V) or model dir")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()

    from eyeops.data.schema import Message
    from eyeops.inference import GenerationRequest

    requests = [
        GenerationRequest(messages=[Message(role="user", content=p)], max_new_tokens=args.tokens)
        for p in PROMPTS
    ]
    bodies = [
        {"messages": [{"role": "user", "content": p}], "max_tokens": args.tokens, "temperature": 0}
        for p in PROMPTS
    ]
    ratio = run(args.recipe, args.model, requests, bodies)
    print(f"RESULT generate recipe={args.recipe} tokens={args.tokens} ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
