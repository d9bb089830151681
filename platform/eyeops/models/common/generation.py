"""Chat generation for causal LMs: batched KV-cache ``generate``, a micro-batcher, streaming.

:class:`ChatModel` satisfies :class:`eyeops.inference.InferenceModel` with capabilities
``{"chat"}``. Concurrent ``generate`` calls (one per HTTP request in the gateway) are grouped by a
background batcher into one left-padded ``model.generate`` call, so 8 concurrent users cost about
one decode loop, not eight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def stream_generation(
    tokenizer: PreTrainedTokenizerBase, run: Callable[..., None], *, thread_name: str = "eyeops-stream"
) -> Iterator[str]:
    """Stream the text of ``run(streamer=..., stopping_criteria=...)`` (one ``model.generate`` call).

    ``run`` decodes on a worker thread into transformers' ``TextIteratorStreamer``; the pieces are
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
        thread = threading.Thread(target=work, name=thread_name, daemon=True)
        thread.start()
        try:
            yield from strip_stream(streamer)
        finally:
            cancelled.set()
            thread.join()
        if errors:
            raise errors[0]

    return pieces()
