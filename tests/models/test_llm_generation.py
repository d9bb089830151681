"""ChatModel: one left-padded batched generation per call, streaming, errors.

Merging concurrent callers is the serving batcher's job: tests/serve/test_batching.py.
"""

from __future__ import annotations

import pytest
import torch
from eyeops_testing.llm_tiny import save_tiny_llm, teach_answer
from PIL import Image

from eyeops.data.schema import Message
from eyeops.errors import InvalidRequest
from eyeops.inference import GenerationRequest, InferenceModel
from eyeops.models.common.generation import strip_stream
from eyeops.models.common.hub import load_causal_lm, load_tokenizer
from eyeops.models.llm.inference import ChatModel

PROMPTS = ["What is glaucoma?", "Describe the lens and cataract surgery in a few words please.", "Hi"]


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    base = str(save_tiny_llm(tmp_path_factory.mktemp("tiny-llm")))
    torch.manual_seed(0)
    return ChatModel(load_causal_lm(base), load_tokenizer(base), system_prompt="Be brief.")


def _req(text: str, n: int = 12, **kw) -> GenerationRequest:
    return GenerationRequest(messages=[Message(role="user", content=text)], max_new_tokens=n, **kw)


def test_is_an_inference_model(chat):
    assert isinstance(chat, InferenceModel) and chat.capabilities == frozenset({"chat"})
    with pytest.raises(InvalidRequest, match="cannot classify"):
        chat.classify([Image.new("RGB", (8, 8))])


def test_padded_batch_equals_single_requests(chat):
    singles = [chat.generate([_req(p)])[0] for p in PROMPTS]
    batch = chat.generate([_req(p) for p in PROMPTS])
    assert [r.text for r in batch] == [r.text for r in singles]
    assert [r.prompt_tokens for r in batch] == [r.prompt_tokens for r in singles]
    assert len({r.prompt_tokens for r in batch}) == 3  # really different lengths, so padding was exercised
    for r in batch:
        assert 1 <= r.completion_tokens <= 12
        assert r.finish_reason in ("stop", "length")


def test_each_request_keeps_its_own_length_limit(chat):
    short, long = chat.generate([_req(PROMPTS[0], 2), _req(PROMPTS[0], 10)])
    assert short.completion_tokens <= 2 and long.completion_tokens <= 10
    full = chat.generate([_req(PROMPTS[0], 10)])[0]
    if full.completion_tokens > 2:  # no early stop: the short answer is the long one's prefix
        assert short.finish_reason == "length" and long.text.startswith(short.text)


def test_one_call_is_one_decode_over_all_requests(chat):
    prefills: list[int] = []  # batch size of each prompt forward (one per generate call)

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            prefills.append(ids.shape[0])

    handle = chat.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        chat.generate([_req(PROMPTS[i % 3]) for i in range(8)])
    finally:
        handle.remove()
    assert prefills == [8]


def test_different_sampling_settings_are_answered_in_order(chat):
    torch.manual_seed(3)
    greedy = chat.generate([_req(PROMPTS[0])])[0].text
    out = chat.generate([_req(PROMPTS[1], 6, temperature=0.9, top_p=0.9), _req(PROMPTS[0])])
    assert out[1].text == greedy and out[0].completion_tokens >= 1


def test_stream_yields_the_same_text_and_can_stop_early(chat):
    request = _req(PROMPTS[0], 10)
    pieces = list(chat.stream(request))
    assert "".join(pieces) == chat.generate([request])[0].text
    stream = chat.stream(_req(PROMPTS[1], 200))
    next(stream, None)
    stream.close()  # client disconnects: decoding stops and the lock is released
    assert chat.generate([_req("Hi", 2)])[0].completion_tokens <= 2


def test_sampling_with_temperature(chat):
    torch.manual_seed(3)
    out = chat.generate([_req(PROMPTS[0], 6, temperature=0.9, top_p=0.9)])[0]
    assert out.completion_tokens >= 1


def test_bad_requests_fail_alone(chat):
    with pytest.raises(InvalidRequest, match="does not accept images"):
        chat.generate([_req("<image> what is this?")])
    with pytest.raises(InvalidRequest, match="does not accept images"):
        chat.generate(
            [
                GenerationRequest(
                    messages=[Message(role="user", content="x")], images=[Image.new("RGB", (4, 4))]
                )
            ]
        )
    with pytest.raises(InvalidRequest, match="exceeds the model's context of 512"):
        chat.generate([_req("eye " * 600, 8)])
    with pytest.raises(InvalidRequest, match="empty"):
        chat.generate([GenerationRequest(messages=[])])
    assert chat.generate([_req("Hi", 2)])[0].completion_tokens <= 2  # the model still answers


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([" ", "\n Glaucoma", " is", "  ", "bad", ". ", "\n\n"], ["Glaucoma", " is", "  bad", "."]),
        (["", "  ", "\n"], []),
        (["A", " b ", "c"], ["A", " b", " c"]),
    ],
)
def test_strip_stream_equals_strip_of_the_whole(pieces, expected):
    assert list(strip_stream(pieces)) == expected
    assert "".join(expected) == "".join(pieces).strip()


def test_strip_stream_never_holds_back_a_visible_word():
    source = iter([" Glaucoma ", "is", " damage"])
    stream = strip_stream(source)
    assert next(stream) == "Glaucoma"
    assert next(source) == "is"  # the first word came out before the next piece was even read


@pytest.fixture(scope="module")
def padded_chat(tmp_path_factory):
    """A tiny LM taught to answer one prompt with whitespace around the text (as untrained LMs do)."""
    base = str(save_tiny_llm(tmp_path_factory.mktemp("padded-llm")))
    tokenizer, model = load_tokenizer(base), load_causal_lm(base)
    teach_answer(model, tokenizer, [{"role": "user", "content": PROMPTS[0]}], PADDED_ANSWER)
    return ChatModel(model, tokenizer)


PADDED_ANSWER = "\n  Glaucoma damages the optic nerve. \n\n"


def test_joined_stream_equals_generate_for_a_whitespace_padded_answer(padded_chat):
    request = _req(PROMPTS[0], 24)
    inputs = padded_chat.inputs([request])
    raw_ids = padded_chat.model.generate(
        **inputs, do_sample=False, max_new_tokens=24, pad_token_id=padded_chat.tokenizer.pad_token_id
    )
    raw = padded_chat.tokenizer.decode(raw_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert raw == PADDED_ANSWER  # the model really emits the whitespace both paths must strip
    pieces = list(padded_chat.stream(request))
    assert pieces and all(pieces)
    assert "".join(pieces) == padded_chat.generate([request])[0].text == PADDED_ANSWER.strip()
