"""Ray Serve face, chat: concurrent requests meet in ``@serve.batch`` and become one generate call,
with the batch window the recipe's ``serve:`` section sets (through ServeSettings in the replica)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from eyeops_testing.llm_tiny import save_tiny_llm, tiny_recipe
from eyeops_testing.serving import API_KEYS, CHAT_KEY

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _batch_metric(url: str) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "eyeops_batch_size"]
    values = {s.name: s.value for s in family.samples}
    return values.get("eyeops_batch_size_count", 0.0), values.get("eyeops_batch_size_sum", 0.0)


@pytest.fixture
def llm_dir(tmp_path) -> Path:
    from eyeops.families import get_family
    from eyeops.recipes import parse_recipe

    recipe = parse_recipe(tiny_recipe(save_tiny_llm(tmp_path / "base")))
    family = get_family("llm")
    family.save(family.build_model(recipe), recipe, tmp_path / "model")
    return tmp_path / "model"


def test_concurrent_chat_requests_share_one_generate_call(llm_dir, monkeypatch):
    import ray
    from ray import serve

    from eyeops.recipes import ServeSpec
    from eyeops.serve.local import free_port
    from eyeops.serve.ray_app import run_ray

    monkeypatch.setenv("EYEOPS_API_KEYS", API_KEYS)
    monkeypatch.delenv("EYEOPS_BATCH_WAIT_TIMEOUT_S", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # a wide window (the recipe's), so that requests routed one by one through Ray's proxy meet
        spec = ServeSpec(backend="ray", min_replicas=1, max_replicas=1, batch_wait_timeout_s=1.0)
        url = run_ray(str(llm_dir), spec, port=free_port(), blocking=False, replica_cpus=1)
        body = {"model": "tiny-llm", "max_tokens": 4, "temperature": 0}
        headers = {"Authorization": f"Bearer {CHAT_KEY}"}

        def chat(text: str) -> httpx.Response:
            messages = [{"role": "user", "content": text}]
            return httpx.post(
                url + "/v1/chat/completions",
                json={**body, "messages": messages},
                headers=headers,
                timeout=120,
            )

        alone = chat("What is glaucoma?")
        assert alone.status_code == 200, alone.text
        calls, items = _batch_metric(url)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(chat, ["What is glaucoma?"] * 8))
        assert _batch_metric(url) == (calls + 1, items + 8)  # eight requests, one model call
        assert [a.status_code for a in answers] == [200] * 8
        texts = {a.json()["choices"][0]["message"]["content"] for a in answers}
        assert texts == {alone.json()["choices"][0]["message"]["content"]}

        with ThreadPoolExecutor(4) as pool:  # a bad request fails alone, its batch-mates answer
            answers = list(pool.map(chat, ["What is glaucoma?"] * 3 + ["<image> what is this?"]))
        assert [a.status_code for a in answers] == [200] * 3 + [400]
        assert "does not accept images" in answers[-1].json()["error"]["message"]
    finally:
        serve.shutdown()
        ray.shutdown()
