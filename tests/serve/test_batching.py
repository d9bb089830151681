"""The serving batcher is where concurrent chat requests merge: real asyncio concurrency against the
real InferenceBackend over a tiny LLM's ChatModel (the model itself never queues or waits)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from eyeops_testing.llm_tiny import save_tiny_llm
from prometheus_client import REGISTRY

from eyeops import compute
from eyeops.data.schema import Message
from eyeops.errors import InvalidRequest
from eyeops.inference import GenerationRequest
from eyeops.models.common.hub import load_causal_lm, load_tokenizer
from eyeops.models.llm.inference import ChatModel
from eyeops.serve.batching import InferenceBackend
from eyeops.serve.predictor import ModelInfo, Predictor

PROMPTS = ["What is glaucoma?", "Describe the lens and cataract surgery in a few words please.", "Hi"]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    base = str(save_tiny_llm(tmp_path_factory.mktemp("tiny-llm")))
    torch.manual_seed(0)
    model = ChatModel(load_causal_lm(base), load_tokenizer(base), system_prompt="Be brief.")
    info = ModelInfo(
        name="tiny-llm", recipe="tiny", family="llm", capabilities=["chat"], labels=[], source=base
    )
    return Predictor(model, info)


class _Prefills:
    """Batch size of every prompt forward the LM runs: one per ``lm.generate`` call."""

    def __init__(self, lm):
        self.sizes: list[int] = []
        self._handle = lm.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            self.sizes.append(ids.shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def _req(text: str, n: int = 8, **kw) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content=text)], max_new_tokens=n, **kw)


def _batch_metric() -> tuple[float, float]:
    """(model calls, items) so far, from the eyeops_batch_size histogram /metrics serves."""
    count = REGISTRY.get_sample_value("eyeops_batch_size_count") or 0.0
    return count, REGISTRY.get_sample_value("eyeops_batch_size_sum") or 0.0


async def _concurrently(backend: InferenceBackend, requests, gap_s: float = 0.0):
    async def one(i: int, request: GenerationRequest):
        await asyncio.sleep(i * gap_s)
        return await backend.generate(None, request)

    return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)), return_exceptions=True)


def test_eight_concurrent_requests_are_one_generate_call(predictor):
    requests = [_req(PROMPTS[i % 3], n=4 + i) for i in range(8)]  # mixed lengths share the batch
    alone = [predictor.generate([r])[0] for r in requests]
    backend = InferenceBackend([predictor], batch_wait_timeout_s=0.01)
    try:
        calls, items = _batch_metric()
        with _Prefills(predictor.model.model) as prefills:
            answers = asyncio.run(_concurrently(backend, requests))
        assert prefills.sizes == [8]  # one left-padded decode over all eight
        assert _batch_metric() == (calls + 1, items + 8)
    finally:
        backend.close()
    assert [a.text for a in answers] == [a.text for a in alone]
    assert [a.completion_tokens for a in answers] == [a.completion_tokens for a in alone]


def test_a_burst_arriving_one_by_one_still_shares_one_call(predictor):
    # 3 ms apart: each arrival keeps the 10 ms window open, although the burst lasts 21 ms
    backend = InferenceBackend([predictor], batch_wait_timeout_s=0.01)
    try:
        with _Prefills(predictor.model.model) as prefills:
            asyncio.run(_concurrently(backend, [_req(PROMPTS[i % 3]) for i in range(8)], gap_s=0.003))
    finally:
        backend.close()
    assert prefills.sizes == [8]


def test_sampling_settings_and_bad_requests_stay_apart(predictor):
    requests = [_req(PROMPTS[i % 3]) for i in range(6)]
    requests[2] = _req("<image> what is this?")  # this text model refuses images
    requests[4] = _req(PROMPTS[0], temperature=0.8, top_p=0.9)
    backend = InferenceBackend([predictor], batch_wait_timeout_s=0.01)
    try:
        answers = asyncio.run(_concurrently(backend, requests))
    finally:
        backend.close()
    assert isinstance(answers[2], InvalidRequest) and "does not accept images" in str(answers[2])
    for i in (0, 1, 3, 5):  # greedy batch-mates answer as they would alone
        assert answers[i].text == predictor.generate([requests[i]])[0].text
    assert answers[4].completion_tokens >= 1


def test_after_a_long_model_call_a_slowly_parsed_burst_still_meets():
    """A decode loop takes seconds; 8 requests parsed 30 ms apart (3x the window) share the next call."""
    from concurrent.futures import ThreadPoolExecutor

    from eyeops.serve.batching import MicroBatcher

    calls: list[int] = []

    def model_call(items: list[int]) -> list[int]:  # a stand-in for a 1 s decode loop
        calls.append(len(items))
        time.sleep(1.0 if len(calls) == 1 else 0.0)
        return items

    async def scenario() -> list[list[int]]:
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(model_call, max_batch_size=16, wait_s=0.01, executor=pool)
            await batcher.submit([0], timeout_s=10)

            async def one(i: int) -> list[int]:
                await asyncio.sleep(0.03 * i)
                return await batcher.submit([i], timeout_s=10)

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(scenario()) == [[i] for i in range(8)]
    assert calls == [1, 8]


def test_model_calls_and_streams_run_on_the_one_compute_thread(predictor):
    # One thread runs torch in a serving process (eyeops.compute): a second thread entering torch
    # would give libgomp a second worker team and slow every decode (benchmarks/generate.py).
    ran_on: set[int] = set()
    hook = predictor.model.model.register_forward_pre_hook(lambda *_: ran_on.add(threading.get_ident()))
    backend = InferenceBackend([predictor], batch_wait_timeout_s=0.01)

    async def stream_then_batch():
        pieces = [piece async for piece in backend.stream(None, _req(PROMPTS[0]))]
        return pieces, await _concurrently(backend, [_req(p) for p in PROMPTS])

    try:
        pieces, answers = asyncio.run(stream_then_batch())
    finally:
        hook.remove()
        backend.close()
    assert "".join(pieces) == answers[0].text
    assert ran_on == {compute.call(threading.get_ident)}
    assert threading.get_ident() not in ran_on
