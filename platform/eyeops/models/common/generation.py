"""Chat generation for every chat family: one batched KV-cache ``generate``, token streaming.

:class:`BatchedChat` is the generation half of each chat family's
:class:`eyeops.inference.InferenceModel` (llm, vlm, ophglm, healthgpt): ``generate(requests)`` is
one plain left-padded ``lm.generate`` over the requests given, ``stream`` yields real tokens and
stops decoding when the client leaves. Merging concurrent callers into one call is the serving
layer's job (``eyeops.serve.batching``), never the model's.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from eyeops import compute
from eyeops.devices import module_device, resolve_device, to_device
from eyeops.errors import ConfigError
from eyeops.inference import GenerationRequest, GenerationResult

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool
) -> str:
    """The chat template applied as text (special tokens spelled out, tokenised later)."""
    if not tokenizer.chat_template:
        raise ConfigError("the tokenizer has no chat template: set model.chat_template in the recipe")
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def strip_stream(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` whose concatenation is ``"".join(pieces).strip()``, streamed as early as possible.

    Leading whitespace is dropped until the first visible character; whitespace after that is held
    back only until the next visible character arrives (and dropped at the end), so a piece holding
    a word is never delayed. No empty pieces are yielded.
    """
    started, held = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        body = piece.rstrip()
        if not body:  # only whitespace: it may turn out to be trailing
            held += piece
            continue
        yield held + body
        held = piece[len(body) :]


def stream_generation(tokenizer: PreTrainedTokenizerBase, run: Callable[..., None]) -> Iterator[str]:
    """Stream the text of ``run(streamer=..., stopping_criteria=...)`` (one ``model.generate`` call).

    ``run`` decodes on the compute thread (:mod:`eyeops.compute`) into transformers'
    ``TextIteratorStreamer``; the pieces are
    stripped like ``generate``'s text (:func:`strip_stream`), so a streamed answer joins to the
    non-streamed one. Closing the iterator (the client went away) stops decoding at the next token;
    an error in ``run`` is raised here, in the consumer, not lost on the worker thread.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancelled = threading.Event()

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
            return cancelled.is_set()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel()]))
        except BaseException as exc:  # surfaced to the consumer below, not swallowed
            errors.append(exc)
            streamer.end()

    def pieces() -> Iterator[str]:
        join = compute.start(work)
        try:
            yield from strip_stream(streamer)
        finally:
            cancelled.set()
            join()
        if errors:
            raise errors[0]

    return pieces()


# --- the one generation path every chat family runs -------------------------------------------------
def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` with every prompt right-aligned: new tokens line up on the right."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :], mask[row, width - len(prompt) :] = torch.tensor(prompt), 1
    return ids, mask


def sampling_groups(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Indices of ``requests`` grouped by sampling settings (one ``generate`` call per group), in order.

    Greedy requests share one group whatever their ``top_p``; different ``max_new_tokens`` share a
    batch (each row is cut at its own limit).
    """
    groups: dict[tuple[float, float], list[int]] = {}
    for i, r in enumerate(requests):
        key = (0.0, 1.0) if r.temperature == 0.0 else (r.temperature, r.top_p)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


class BatchedChat(ABC):
    """The generation path of every chat family (llm, vlm, ophglm, healthgpt).

    ``generate(requests)`` is one plain batched call: per group of equal sampling settings, one
    left-padded KV-cache ``lm.generate`` over every request given -- no queue, no thread, no waiting.
    Concurrent callers are merged by the serving layer (``eyeops.serve.batching``), not here.
    ``stream(request)`` decodes one request token by token (:func:`stream_generation`).

    A family says how requests become ``generate`` inputs (:meth:`inputs`: ``input_ids`` or, for
    prefix-LMs with image features scattered in, ``inputs_embeds`` from :meth:`embedded`) and may
    refine the hooks (:meth:`check`, :meth:`token_limit`, :meth:`decoding`, :meth:`constraints`,
    :meth:`result`).
    """

    labels: list[str] = []

    def __init__(self, tokenizer: PreTrainedTokenizerBase, device: Any = None) -> None:
        # Inputs follow the model: ``device`` is where the family placed it, and the LM's own
        # parameters say where that really is (a family may have loaded it there itself).
        self.tokenizer, self.device = tokenizer, module_device(self.lm)
        if device is not None and resolve_device(device) != self.device:
            raise ConfigError(f"the language model is on {self.device}, not on the requested {device}")
        self.lm.config.use_cache = True
        self._lock = threading.Lock()  # one decode at a time: torch modules are not re-entrant
        ids = self.lm.generation_config.eos_token_id
        self.stop_ids: list[int] = [ids] if isinstance(ids, int) else list(ids or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.stop_ids:
            self.stop_ids.append(tokenizer.eos_token_id)

    # --- what a family provides ------------------------------------------------------------------
    @property
    @abstractmethod
    def lm(self) -> PreTrainedModel:
        """The causal LM that decodes."""

    @abstractmethod
    def inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, torch.Tensor]:
        """Left-padded ``generate`` inputs: ``input_ids`` or ``inputs_embeds``, and ``attention_mask``."""

    def check(self, request: GenerationRequest) -> None:
        """Raise :class:`~eyeops.errors.InvalidRequest` for a request this model cannot answer."""
        return None

    def token_limit(self, request: GenerationRequest) -> int:
        """How many tokens ``request`` may decode."""
        return request.max_new_tokens

    def decoding(self, requests: Sequence[GenerationRequest]) -> AbstractContextManager:
        """Held around the decode of ``requests`` (e.g. routing rows through their tasks' adapters)."""
        return nullcontext()

    def constraints(self, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
        """Extra ``generate`` arguments for this batch (e.g. a grammar)."""
        return {}

    def result(self, tokens: list[int], request: GenerationRequest, prompt_tokens: int) -> GenerationResult:
        """The answer from a row's new tokens: text up to the first stop id, at most the row's limit."""
        tokens = tokens[: self.token_limit(request)]
        cut = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        text = self.tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
        return GenerationResult(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) if cut is None else cut + 1,  # the stop token was decoded too
            finish_reason="length" if cut is None else "stop",
        )

    # --- shared ----------------------------------------------------------------------------------
    def embedded(
        self, prompts: Sequence[Sequence[int]], embed: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Prefix-LM inputs: left-padded ``prompts`` through ``embed`` (which scatters image features in)."""
        import torch

        ids, mask = left_pad(prompts, int(self.tokenizer.pad_token_id))
        with torch.inference_mode():
            embeds = embed(ids.to(self.device))
        return {"inputs_embeds": embeds, "attention_mask": mask.to(self.device)}

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Answer ``requests`` now, in one decode per group of equal sampling settings."""
        for request in requests:
            self.check(request)
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in sampling_groups(requests):
            batch = [requests[i] for i in indices]
            with self._lock:
                inputs = self.inputs(batch)
                output = self._decode(batch, inputs)
            if "input_ids" in inputs:  # decoder-only generate returns prompt + new tokens
                output = output[:, inputs["input_ids"].shape[1] :]
            prompt_tokens = inputs["attention_mask"].sum(1).tolist()
            for row, i in enumerate(indices):
                results[i] = self.result(output[row].tolist(), requests[i], int(prompt_tokens[row]))
        return results  # type: ignore[return-value]

    def stream(self, request: GenerationRequest) -> Iterator[str]:
        """Text pieces as tokens are decoded; joined, they equal ``generate``'s text."""
        self.check(request)
        inputs = compute.call(self._locked_inputs, request)  # bad inputs raise here, before any piece

        def run(**streaming: Any) -> None:
            with self._lock:
                self._decode([request], inputs, **streaming)

        return stream_generation(self.tokenizer, run)

    def _locked_inputs(self, request: GenerationRequest) -> dict[str, Any]:
        with self._lock:
            return self.inputs([request])

    def _decode(self, batch: Sequence[GenerationRequest], inputs: dict[str, Any], **extra: Any) -> Any:
        import torch

        first = batch[0]
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
        else:
            sampling = {"do_sample": False, "temperature": None, "top_p": None}
        with torch.inference_mode(), self.decoding(batch):
            return self.lm.generate(
                **to_device(inputs, self.device),  # every family's ids, masks and embeds, streams too
                **sampling,
                top_k=None,
                max_new_tokens=max(self.token_limit(r) for r in batch),
                pad_token_id=int(self.tokenizer.pad_token_id),
                eos_token_id=self.stop_ids,
                **self.constraints(batch),
                **extra,
            )
