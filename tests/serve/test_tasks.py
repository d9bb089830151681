"""HealthGPT task selection and image answers through the gateway, on a real uvicorn server.

One replica (``create_app``) serves a tiny HealthGPT built as tests/models/test_healthgpt.py builds
it, plus a tiny single-task LLM: the task comes from the ``model`` suffix or ``eyeops_task``; the
generation task answers with a ``data:image/png`` content part; mixed concurrent requests get the
same answers as alone; task mistakes are 400 JSON before any streaming starts.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from eyeops_testing.llm_tiny import tiny_recipe
from eyeops_testing.serving import CHAT_KEY
from eyeops_testing.vlm_tiny import save_tiny_llm, tiny_healthgpt_recipe
from PIL import Image

from eyeops.data.schema import IMAGE_TOKEN, Message
from eyeops.errors import InvalidRequest
from eyeops.inference import GenerationRequest

pytestmark = pytest.mark.integration

HG, LLM = "tiny-healthgpt", "tiny-llm"
QUESTION = "Is there glaucoma? Answer yes or no."
HEADERS = {"Authorization": f"Bearer {CHAT_KEY}"}


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [_png((180, 60, 30)), _png((40, 40, 200))]


def _messages(image: bytes, text: str = QUESTION) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


def _alone(predictor, image: bytes, task: str) -> tuple[str, list[bytes]]:
    """What the predictor answers by itself (the gateway joins parts with a newline, as here)."""
    request = GenerationRequest(
        messages=[Message(role="user", content=f"{IMAGE_TOKEN}\n{QUESTION}")],
        images=[Image.open(io.BytesIO(image)).convert("RGB")],
        max_new_tokens=6,
        task=task,
    )
    result = predictor.generate([request])[0]
    return result.text, result.images_png


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, expected answers per (image index, task)) of a real server over both models."""
    import torch
    import uvicorn

    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe
    from eyeops.serve.gateway import create_app
    from eyeops.serve.local import free_port
    from eyeops.serve.predictor import load_predictor
    from eyeops.serve.settings import load_serve_settings

    llm_base = save_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
    dirs = {}
    for name, mapping in ((HG, tiny_healthgpt_recipe(llm_base)), (LLM, tiny_recipe(llm_base))):
        recipe = parse_recipe(mapping)
        family = get_family(recipe.family)
        torch.manual_seed(0)
        dirs[name] = tmp_path_factory.mktemp(name)
        family.save(family.build_model(recipe), recipe, dirs[name])
    healthgpt, llm = load_predictor(dirs[HG]), load_predictor(dirs[LLM])
    expected = {
        (i, task): _alone(healthgpt, image, task)
        for i, image in enumerate(IMAGES)
        for task in ("comprehension", "generation")
    }
    app = create_app([healthgpt, llm], load_serve_settings(api_keys=f"{CHAT_KEY}:chat"))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}", expected, healthgpt
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _chat(url: str, model: str, image: bytes, **extra) -> httpx.Response:
    body = {"model": model, "messages": _messages(image), "max_tokens": 6, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=120)


def _answer(response: httpx.Response) -> tuple[str, list[bytes]]:
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    if isinstance(content, str):
        return content, []
    text = "".join(p["text"] for p in content if p["type"] == "text")
    prefix = "data:image/png;base64,"
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert all(u.startswith(prefix) for u in urls)
    return text, [base64.b64decode(u.removeprefix(prefix)) for u in urls]


def test_models_list_tasks(served):
    url, _, _ = served
    cards = {c["id"]: c for c in httpx.get(url + "/v1/models", headers=HEADERS).json()["data"]}
    image_tasks = ("generation", "reconstruction", "super_resolution", "modality_conversion", "text_to_image")
    assert cards[HG]["tasks"] == {"comprehension": "chat"} | dict.fromkeys(image_tasks, "generate_image")
    assert cards[HG]["default_task"] == "comprehension"
    assert cards[LLM]["tasks"] == {} and cards[LLM]["default_task"] is None


def test_suffix_and_field_select_the_task_openai_client_parses_parts(served):
    from openai import OpenAI

    url, expected, _ = served
    client = OpenAI(base_url=url + "/v1", api_key=CHAT_KEY, max_retries=0)
    by_suffix = client.chat.completions.create(
        model=f"{HG}:generation", messages=_messages(IMAGES[0]), max_tokens=6
    )
    parts = by_suffix.choices[0].message.content
    assert isinstance(parts, list) and [p["type"] for p in parts] == ["text", "image_url"]
    assert parts[0]["text"] == expected[0, "generation"][0]
    url_text = parts[1]["image_url"]["url"]
    assert url_text.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(url_text.split(",", 1)[1])))
    png.load()
    assert png.format == "PNG" and png.size == (32, 32)  # the VQ tokenizer's image size
    by_field = _chat(url, HG, IMAGES[0], eyeops_task="generation")
    assert _answer(by_field) == expected[0, "generation"] and by_field.json()["eyeops_task"] == "generation"
    # alias / version forms carry a suffix too; the same task in both places is fine
    same = _chat(url, f"{HG}@champion:generation", IMAGES[0], eyeops_task="generation")
    assert _answer(same) == expected[0, "generation"]

    text = client.chat.completions.create(
        model=f"{HG}/3:comprehension", messages=_messages(IMAGES[1]), max_tokens=6
    )
    assert text.choices[0].message.content == expected[1, "comprehension"][0]  # plain string, no parts
    default = _chat(url, HG, IMAGES[1])
    assert _answer(default) == expected[1, "comprehension"]
    assert default.json()["eyeops_task"] == "comprehension"


def test_concurrent_mixed_tasks_answer_as_alone(served):
    url, expected, _ = served
    jobs = [(i % 2, ("comprehension", "generation")[(i // 2) % 2]) for i in range(8)]
    merged_before = _merged_model_calls(url)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: _chat(url, f"{HG}:{job[1]}", IMAGES[job[0]]), jobs))
    assert [_answer(a) for a in answers] == [expected[job] for job in jobs]
    # While the first request decodes the others queue up and reach the model as one list.
    assert _merged_model_calls(url) > merged_before


def _merged_model_calls(url: str) -> float:
    """Model calls that carried more than one item (from the eyeops_batch_size histogram)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "eyeops_batch_size"]
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    return values[("eyeops_batch_size_count", None)] - values[("eyeops_batch_size_bucket", "1.0")]


def test_task_mistakes_are_400_json(served):
    url, _, _ = served
    cases = [
        (_chat(url, f"{HG}:segment", IMAGES[0]), ["unknown task 'segment'", "comprehension, generation"]),
        (
            _chat(url, f"{HG}:generation", IMAGES[0], eyeops_task="comprehension"),
            ["'generation'", "'comprehension'", "disagree"],
        ),
        (_chat(url, HG, IMAGES[0], eyeops_task="generation", stream=True), ["cannot be streamed"]),
        (_chat(url, f"{LLM}:generation", IMAGES[0]), ["'tiny-llm' has no tasks"]),
        (_chat(url, "nobody:generation", IMAGES[0]), ["'nobody' is not served"]),
    ]
    for response, needles in cases:
        assert response.status_code in (400, 404), response.text
        assert response.headers["content-type"].startswith("application/json")
        message = response.json()["error"]["message"]
        assert all(n in message for n in needles), message
    assert [r.status_code for r, _ in cases] == [400, 400, 400, 400, 404]


def test_served_name_with_a_colon_wins_over_a_suffix(served):
    from eyeops.serve.batching import InferenceBackend
    from eyeops.serve.gateway import _chat_target
    from eyeops.serve.predictor import Predictor
    from eyeops.serve.schemas import ChatCompletionRequest

    _, _, healthgpt = served
    odd = Predictor(healthgpt.model, healthgpt.info.model_copy(update={"name": f"{HG}:generation"}))
    backend = InferenceBackend([healthgpt, odd])
    try:

        def target(model: str, **extra):
            body = ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}], **extra)
            predictor, task = _chat_target(backend, body)
            return predictor.name, task

        assert target(f"{HG}:generation") == (f"{HG}:generation", "comprehension")
        assert target(f"{HG}:generation:generation") == (f"{HG}:generation", "generation")
        assert target(f"{HG}/2:generation") == (HG, "generation")
        assert target(HG, eyeops_task="generation") == (HG, "generation")
        with pytest.raises(InvalidRequest, match="unknown task 'x'"):
            target(f"{HG}@prod:x")
    finally:
        backend.close()
