"""OpenAI-style chat completions (plain and SSE streaming) on a real served LLM, via the openai client.

The model is the LLM family's own: a tiny Llama + BPE tokenizer built locally (the LLM room's
test helper), saved by ``FAMILY.save`` and served from its directory by ``eyeops serve``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from eyeops_testing.llm_tiny import save_tiny_llm, teach_answer, tiny_recipe
from eyeops_testing.serving import CHAT_KEY, b64, local_server

pytestmark = pytest.mark.integration
MESSAGES = [
    {"role": "system", "content": "You are an eye doctor."},
    {"role": "user", "content": "What is glaucoma?"},
]


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    from eyeops.families import get_family
    from eyeops.models.common.hub import load_tokenizer
    from eyeops.recipes import parse_recipe

    base = save_tiny_llm(tmp_path_factory.mktemp("tiny-base"))
    recipe = parse_recipe(tiny_recipe(base, stages=[{"name": "sft", "trainable": ["all"], "max_steps": 1}]))
    family = get_family("llm")
    model = family.build_model(recipe)
    family.apply_stage(model, recipe.train.stages[0])
    teach_answer(model, load_tokenizer(str(base)), MESSAGES, "Glaucoma damages the optic nerve.")
    out = tmp_path_factory.mktemp("tiny-llm-model")
    family.save(model, recipe, out)
    return out


@pytest.fixture(scope="module")
def chat_server(llm_dir, tmp_path_factory):
    with local_server(llm_dir, tmp_path_factory, "chat") as server:
        yield server


def test_openai_client_plain_and_streaming_agree(chat_server):
    from openai import OpenAI

    client = OpenAI(base_url=chat_server.url + "/v1", api_key=CHAT_KEY, max_retries=0)
    models = client.models.list()
    (card,) = models.data
    assert card.id == "tiny-llm"
    messages = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]}]
    plain = client.chat.completions.create(model="tiny-llm", messages=messages, max_tokens=8, temperature=0)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.usage.completion_tokens >= 1 and plain.system_fingerprint.startswith("tiny-llm/local/")

    chunks = list(
        client.chat.completions.create(
            model="tiny-llm", messages=messages, max_tokens=8, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == plain.choices[0].message.content  # greedy: the same answer both ways
    assert "Glaucoma damages the optic nerve.".startswith(streamed) and len(streamed) > 10
    assert len(chunks) >= 3  # role chunk, at least one content piece, finish chunk


def test_sse_wire_format_and_errors(chat_server, retina_jpeg):
    headers = {"Authorization": f"Bearer {CHAT_KEY}"}
    body = {
        "model": "tiny-llm",
        "stream": True,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Define cataract."}],
    }
    with httpx.stream(
        "POST", chat_server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"

    image_part = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(retina_jpeg)}"}}
    bad = [
        ({"messages": [{"role": "user", "content": [image_part]}]}, 400, "does not accept images"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://example.com/eye.png"}}
                        ],
                    }
                ]
            },
            400,
            "data: URL",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                    }
                ]
            },
            400,
            "base64",
        ),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 422, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 422, "n"),
    ]
    for extra, status, needle in bad:
        r = httpx.post(
            chat_server.url + "/v1/chat/completions",
            json={"model": "tiny-llm", **extra},
            headers=headers,
            timeout=60,
        )
        assert r.status_code == status, (extra, r.text)
        assert needle in r.json()["error"]["message"], r.text
    r = httpx.post(
        chat_server.url + "/v1/classify",
        json={"image_b64": b64(retina_jpeg)},
        headers={"Authorization": f"Bearer {CHAT_KEY}"},
    )
    assert r.status_code == 403  # a chat-only key may not classify
