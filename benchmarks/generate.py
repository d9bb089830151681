"""Generation throughput: the eyeops ChatModel path vs plain ``model.generate`` on the same model.

Same model, same prompts, same greedy settings, same run:
- single: one request at a time (the batcher's overhead);
- concurrent: 8 requests arriving together — 8 threads calling ``ChatModel.generate`` (the
  batcher merges them into one left-padded decode loop) vs a plain loop of 8 ``model.generate``.
``--endpoint URL`` adds the served model (``POST /v1/chat/completions``) with 8 concurrent clients;
give ``--model`` the same registered model the endpoint serves (its base + adapter and system prompt
are then loaded here too), so both legs run the same weights on the same prompts.

    python benchmarks/generate.py [--base packaged:smollm2-135m-instruct] [--tokens 32]
    EYEOPS_API_KEY=... python benchmarks/generate.py --model models:/eyeops-eye-llm/1 \
        --endpoint http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from eyeops.data.schema import Message
from eyeops.inference import GenerationRequest
from eyeops.models.common.generation import render_chat
from eyeops.models.common.hub import load_causal_lm, load_tokenizer
from eyeops.models.llm.inference import ChatModel
from eyeops.serve.predictor import load_predictor

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


def plain_generate(chat: ChatModel, prompt: str, tokens: int) -> int:
    """One request through bare ``model.generate`` (same chat rendering); new tokens up to EOS."""
    model, tokenizer = chat.model, chat.tokenizer
    text = render_chat(tokenizer, chat.conversation(_request(prompt, tokens)), add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return new.index(eos) + 1 if eos in new else len(new)


def _request(prompt: str, tokens: int) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content=prompt)], max_new_tokens=tokens)


def concurrent(fn, n: int) -> tuple[int, float]:
    """Run ``fn(i)`` in n threads released together; (sum of returned tokens, wall seconds)."""
    counts = [0] * n
    barrier = threading.Barrier(n + 1)

    def work(i: int) -> None:
        barrier.wait()
        counts[i] = fn(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


def endpoint_tokens(url: str, prompt: str, tokens: int, model: str) -> int:
    import httpx

    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
    }
    key = os.environ.get("EYEOPS_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, headers=headers, timeout=600)
    resp.raise_for_status()
    return int(resp.json()["usage"]["completion_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--model", default=None, help="a registered model (models:/NAME/V) or model dir")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--endpoint", default=None, help="gateway base URL serving the same model")
    parser.add_argument("--model-name", default="eyeops-eye-llm")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    if args.model:
        chat = load_predictor(args.model).model
        chat.max_batch_size, chat.batch_wait_s = 8, 0.02
    else:
        model, tokenizer = load_causal_lm(args.base).eval(), load_tokenizer(args.base)
        chat = ChatModel(model, tokenizer, max_batch_size=8, batch_wait_s=0.02)
    label = args.model or args.base
    n, tok = len(PROMPTS), args.tokens
    plain_generate(chat, PROMPTS[0], 4)  # warm-up (allocator, kernels)
    chat.generate([_request(PROMPTS[0], 4)])

    start = time.perf_counter()
    plain_single = sum(plain_generate(chat, p, tok) for p in PROMPTS[:3])
    plain_single_s = time.perf_counter() - start
    start = time.perf_counter()
    ours_single = sum(chat.generate([_request(p, tok)])[0].completion_tokens for p in PROMPTS[:3])
    ours_single_s = time.perf_counter() - start

    start = time.perf_counter()
    plain_conc = sum(plain_generate(chat, p, tok) for p in PROMPTS)  # a naive server: one by one
    plain_conc_s = time.perf_counter() - start
    ours_conc, ours_conc_s = concurrent(
        lambda i: chat.generate([_request(PROMPTS[i], tok)])[0].completion_tokens, n
    )

    rows = [
        ("single", plain_single / plain_single_s, ours_single / ours_single_s),
        (f"{n} concurrent", plain_conc / plain_conc_s, ours_conc / ours_conc_s),
    ]
    print(f"model {label}, greedy, max_new_tokens={tok}, torch threads={torch.get_num_threads()}")
    print(f"{'case':<14} {'plain tok/s':>12} {'eyeops tok/s':>13} {'ratio':>7}")
    for name, plain, ours in rows:
        print(f"{name:<14} {plain:12.1f} {ours:13.1f} {ours / plain:7.2f}x")
    if args.endpoint:
        endpoint_tokens(args.endpoint, PROMPTS[0], 4, args.model_name)  # warm-up
        start = time.perf_counter()
        got = sum(endpoint_tokens(args.endpoint, p, tok, args.model_name) for p in PROMPTS[:3])
        served_single = got / (time.perf_counter() - start)
        got, secs = concurrent(lambda i: endpoint_tokens(args.endpoint, PROMPTS[i], tok, args.model_name), n)
        served_rows = [("endpoint 1", rows[0][1], served_single), (f"endpoint {n}", rows[1][1], got / secs)]
        for name, plain, served in served_rows:
            print(f"{name:<14} {plain:12.1f} {served:13.1f} {served / plain:7.2f}x")
    print(
        f"RESULTS.md: generate ({label}, {tok} tokens): single {rows[0][2] / rows[0][1]:.2f}x, "
        f"{n} concurrent {rows[1][2] / rows[1][1]:.2f}x tokens/s vs plain model.generate "
        f"(batches run: {chat.stats['batches']}, widest {chat.stats['largest_batch']})"
    )
    chat.close()


if __name__ == "__main__":
    main()
