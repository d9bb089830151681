"""eye-llm inference: a loaded causal LM answering chat requests (batched KV-cache generate, streaming)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from PIL import Image

from eyeops.data.schema import IMAGE_TOKEN
from eyeops.devices import module_device, place, to_device
from eyeops.errors import InvalidRequest
from eyeops.inference import Capability, ClassifyResult, GenerationRequest
from eyeops.models.common.generation import BatchedChat, render_chat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ChatModel(BatchedChat):
    """A loaded causal LM behind the serving contract (``generate`` one batch, ``stream`` incremental)."""

    capabilities: frozenset[Capability] = frozenset({"chat"})
    tasks: Mapping[str, Capability] = MappingProxyType({})
    default_task: str | None = None

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, system_prompt: str | None = None
    ) -> None:
        self.model = place(model, module_device(model)).eval()  # bf16 a GPU lacks → fp16
        tokenizer.padding_side = "left"  # decoder-only batches: new tokens must line up on the right
        super().__init__(tokenizer)
        self.system_prompt = system_prompt
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)

    @property
    def lm(self) -> PreTrainedModel:
        return self.model

    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        raise InvalidRequest(
            "this is a text chat model: it cannot classify images (use /v1/chat/completions)"
        )

    def check(self, request: GenerationRequest) -> None:
        if request.images or any(IMAGE_TOKEN in m.content for m in request.messages):
            raise InvalidRequest("this text model does not accept images; send text-only messages")
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        text = render_chat(self.tokenizer, self.conversation(request), add_generation_prompt=True)
        n_prompt = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.max_positions and n_prompt + request.max_new_tokens > self.max_positions:
            raise InvalidRequest(
                f"prompt of {n_prompt} tokens + max_new_tokens {request.max_new_tokens} "
                f"exceeds the model's context of {self.max_positions} tokens"
            )

    def conversation(self, request: GenerationRequest) -> list[dict[str, str]]:
        messages = [m.model_dump() for m in request.messages]
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        texts = [
            render_chat(self.tokenizer, self.conversation(r), add_generation_prompt=True) for r in requests
        ]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return to_device(inputs, self.device)
