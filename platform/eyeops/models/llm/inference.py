"""eye-llm inference: a loaded causal LM answering chat requests (batched KV-cache generate, streaming)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from PIL import Image

from eyeops.data.schema import IMAGE_TOKEN
from eyeops.errors import InvalidRequest
from eyeops.inference import Capability, ClassifyResult, GenerationRequest, GenerationResult
from eyeops.models.common.generation import render_chat, stream_generation

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class ChatModel:
    """A loaded causal LM behind the serving contract (``generate`` batched, ``stream`` incremental)."""

    capabilities: frozenset[Capability] = frozenset({"chat"})
    labels: list[str] = []

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        system_prompt: str | None = None,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.01,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # decoder-only batches: new tokens must line up on the right
        self.system_prompt = system_prompt
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.model.config.use_cache = True
        self._lock = threading.Lock()  # one forward pass at a time: torch modules are not re-entrant
        self._queue: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_guard = threading.Lock()
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # Batching counters (for /metrics and tests): decode loops run, requests served, widest batch.
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0}

    # --- InferenceModel --------------------------------------------------------------------------
    def classify(self, images: Sequence[Image.Image]) -> list[ClassifyResult]:
        raise InvalidRequest(
            "this is a text chat model: it cannot classify images (use /v1/chat/completions)"
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer every request; concurrent callers are merged into shared batches."""
        for request in requests:
            self._validate(request)
        self._ensure_worker()
        futures: list[Future] = []
        for request in requests:
            future: Future = Future()
            self._queue.put((request, future))
            futures.append(future)
        return [future.result() for future in futures]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as they are decoded (TextIteratorStreamer fed by a generation thread)."""
        self._validate(request)
        inputs = self._encode([request])

        def run(**streaming: Any) -> None:
            with self._lock:
                self.model.generate(
                    **inputs, **self._sampling(request), max_new_tokens=request.max_new_tokens, **streaming
                )

        return stream_generation(self.tokenizer, run, thread_name="eyeops-llm-stream")

    # --- batching --------------------------------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One padded ``model.generate`` over requests that share sampling settings (no queueing)."""
        import torch

        inputs = self._encode(requests)
        prompt_len = inputs["input_ids"].shape[1]
        longest = max(r.max_new_tokens for r in requests)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **self._sampling(requests[0]), max_new_tokens=longest)
            self.stats["batches"] += 1
            self.stats["requests"] += len(requests)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(requests))
        eos_ids = self._eos_ids()
        results = []
        for row, request in enumerate(requests):
            # Requests in one batch may ask for different lengths: cut each at its own limit.
            tokens = output[row, prompt_len : prompt_len + request.max_new_tokens].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
            finish = "stop" if cut is not None else "length"
            tokens = tokens[:cut] if cut is not None else tokens
            results.append(
                GenerationResult(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True).strip(),
                    prompt_tokens=int(inputs["attention_mask"][row].sum()),
                    completion_tokens=len(tokens) + (1 if cut is not None else 0),
                    finish_reason=finish,
                )
            )
        return results

    def close(self) -> None:
        """Stop the batcher thread (pending requests are still answered first)."""
        with self._worker_guard:
            if self._worker is not None:
                self._queue.put(None)
                self._worker.join()
                self._worker = None

    def _ensure_worker(self) -> None:
        with self._worker_guard:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._run_batches, name="eyeops-llm-batcher", daemon=True
                )
                self._worker.start()

    def _run_batches(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            deadline = time.monotonic() + self.batch_wait_s
            stop = False
            # Wait briefly for concurrent callers so they share one decode loop.
            while len(pending) < self.max_batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
            groups: dict[tuple[float, float], list[tuple[GenerationRequest, Future]]] = {}
            for request, future in pending:
                groups.setdefault((request.temperature, request.top_p), []).append((request, future))
            for group in groups.values():
                try:
                    results = self.generate_batch([request for request, _ in group])
                except Exception as exc:  # every waiting caller gets the error, the worker lives on
                    for _, future in group:
                        future.set_exception(exc)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    future.set_result(result)
            if stop:
                return

    # --- helpers ---------------------------------------------------------------------------------
    def _validate(self, request: GenerationRequest) -> None:
        if request.images or any(IMAGE_TOKEN in m.content for m in request.messages):
            raise InvalidRequest("this text model does not accept images; send text-only messages")
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        # Checked per request, before batching, so one oversized prompt never fails its batch-mates.
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

    def _encode(self, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
        texts = [
            render_chat(self.tokenizer, self.conversation(r), add_generation_prompt=True) for r in requests
        ]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in inputs.items()}

    def _sampling(self, request: GenerationRequest) -> dict[str, Any]:
        pad = self.tokenizer.pad_token_id
        if request.temperature == 0.0:
            return {
                "do_sample": False,
                "pad_token_id": pad,
                "temperature": None,
                "top_p": None,
                "top_k": None,
            }
        return {
            "do_sample": True,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": None,
            "pad_token_id": pad,
        }

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return set(ids)
