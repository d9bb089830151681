"""Dynamic batching and the async face of a Predictor: the only place concurrent requests merge.

Concurrent HTTP requests each carry one or a few images, or one chat request; running them one by
one wastes most of a forward pass (or a whole decode loop). :class:`MicroBatcher` gathers requests
while they keep arriving (each arrival within ``wait_s`` of the last, until ``max_batch_size``
items) and runs one model call in a dedicated thread, so the event loop keeps accepting and decoding
requests meanwhile. Models themselves never queue: ``generate(requests)`` is one plain batched call.
Ray Serve replicas use ``@serve.batch`` instead and plug in through :class:`InferenceBackend`
(see ``ray_app.py``). Both read their window from :class:`~eyeops.serve.settings.ServeSettings`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from PIL import Image

from eyeops import compute
from eyeops.errors import EyeopsError, InferenceTimeout, NotFoundError
from eyeops.inference import GenerationRequest, GenerationResult
from eyeops.serve.limits import BATCH_SIZE
from eyeops.serve.predictor import ClassifyAnswer, Predictor
from eyeops.serve.settings import ServeSettings

_DEFAULTS = ServeSettings.model_fields

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()
MAX_WINDOWS = 8  # the longest a batch waits for company, in batch windows
# Long model calls (a decode loop takes seconds) stretch the wait between arrivals to this share of
# the last call, so a burst slowed by request parsing is not split into two long calls.
CALL_SHARE = 0.05


def each_alone_on_client_error(fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R | EyeopsError]:
    """``fn(items)``; when it fails with a client error, each item again alone, so one bad request
    gets its own error (in its place in the list) and cannot fail its batch-mates."""
    try:
        return list(fn(items))
    except EyeopsError as exc:
        if len(items) == 1:
            return [exc]
    answers: list[R | EyeopsError] = []
    for item in items:
        try:
            answers += fn([item])
        except EyeopsError as exc:
            answers.append(exc)
    return answers


class MicroBatcher(Generic[T, R]):
    """Group items from concurrent callers into batches for ``fn`` (list in, same-length list out)."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        *,
        max_batch_size: int,
        wait_s: float,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.fn, self.max_batch_size, self.wait_s, self.executor = fn, max_batch_size, wait_s, executor
        self._queue: asyncio.Queue[tuple[list[T], asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._last_call_s = 0.0  # how long the last model call took

    async def submit(self, items: Sequence[T], timeout_s: float) -> list[R]:
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((list(items), future))
        try:
            # shield: a timed-out caller must not cancel the batch other callers are waiting on
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise InferenceTimeout(f"model did not answer within {timeout_s:g} s") from None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0][0])
            # A burst of requests reaches the queue one by one (the event loop parses each first), so
            # the window stays open while they keep coming: each arrival within ``gap`` of the last,
            # all within MAX_WINDOWS gaps. Waiting a few % of a long call for a request beats
            # splitting the burst, which makes the second part wait a whole call.
            gap = max(self.wait_s, CALL_SHARE * self._last_call_s)
            start = last = loop.time()
            while size < self.max_batch_size:
                remaining = min(last + gap, start + MAX_WINDOWS * gap) - loop.time()
                try:
                    nxt = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                pending.append(nxt)
                size += len(nxt[0])
                last = loop.time()
            await self._answer(pending)

    async def _answer(self, pending: list[tuple[list[T], asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for batch, _ in pending for item in batch]
        BATCH_SIZE.observe(len(items))
        started = loop.time()
        try:
            results = await loop.run_in_executor(self.executor, self.fn, items)
        except EyeopsError as exc:
            if len(pending) == 1:
                return self._fail(pending, exc)
            # One caller's bad request must not fail its batch-mates: answer each caller alone.
            for one in pending:
                await self._answer([one])
            return
        except Exception as exc:  # delivered to every waiting caller, who maps it to a response
            return self._fail(pending, exc)
        self._last_call_s = loop.time() - started
        offset = 0
        for batch, future in pending:
            if not future.done():
                future.set_result(results[offset : offset + len(batch)])
            offset += len(batch)

    @staticmethod
    def _fail(pending: list[tuple[list[T], asyncio.Future]], exc: BaseException) -> None:
        for _, future in pending:
            if not future.done():
                future.set_exception(exc)


class InferenceBackend:
    """What the gateway routes call: async, batched access to one or more Predictors."""

    def __init__(
        self,
        predictors: Sequence[Predictor],
        *,
        max_batch_size: int = _DEFAULTS["max_batch_size"].default,
        batch_wait_timeout_s: float = _DEFAULTS["batch_wait_timeout_s"].default,
        request_timeout_s: float = _DEFAULTS["request_timeout_s"].default,
        threads: int = _DEFAULTS["inference_threads"].default,
    ) -> None:
        if not predictors:
            raise ValueError("InferenceBackend needs at least one Predictor")
        self.predictors = {p.name: p for p in predictors}
        self.default = predictors[0].name
        self.request_timeout_s = request_timeout_s
        # torch already uses every core inside one forward pass; more threads only add contention,
        # and one thread (the process's compute thread, which loaded the model) keeps libgomp's one
        # team of workers spinning between kernels (eyeops.compute)
        if threads == 1:
            self.executor = compute.executor()
        else:
            self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eyeops-infer")
        batching = {
            "max_batch_size": max_batch_size,
            "wait_s": batch_wait_timeout_s,
            "executor": self.executor,
        }
        self._batchers = {p.name: MicroBatcher(p.classify, **batching) for p in predictors}
        # Concurrent chat requests reach the model as one list, decoded as one left-padded batch
        # (HealthGPT routes each row through its own task's adapters).
        self._generators = {p.name: MicroBatcher(p.generate, **batching) for p in predictors}

    def close(self) -> None:
        """Stop this backend's own inference threads (the process's compute thread lives on)."""
        if self.executor is not compute.executor():
            self.executor.shutdown()

    @property
    def ready(self) -> bool:
        return bool(self.predictors)

    def get(self, name: str | None) -> Predictor:
        key = name or self.default
        try:
            return self.predictors[key]
        except KeyError:
            raise NotFoundError(
                f"model {key!r} is not served here (served: {', '.join(self.predictors)})"
            ) from None

    async def classify(self, name: str | None, images: Sequence[Image.Image]) -> list[ClassifyAnswer]:
        predictor = self.get(name)
        predictor.require("classify")
        return await self._batchers[predictor.name].submit(images, self.request_timeout_s)

    async def generate(self, name: str | None, request: GenerationRequest) -> GenerationResult:
        predictor = self.get(name)
        predictor.require("chat")
        return (await self._generators[predictor.name].submit([request], self.request_timeout_s))[0]

    async def stream(self, name: str | None, request: GenerationRequest) -> AsyncIterator[str]:
        """Text pieces from the model's (blocking) iterator, pumped by a thread into the event loop."""
        predictor = self.get(name)
        predictor.require("chat")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:
            try:
                for piece in predictor.stream(request):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Exception as exc:  # handed to the consumer, which reports it in the stream
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        # The pump only moves text; the decode it reads runs on the compute thread (eyeops.compute).
        threading.Thread(target=pump, name="eyeops-stream", daemon=True).start()
        try:
            while True:
                item = await asyncio.wait_for(queue.get(), self.request_timeout_s)
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        except TimeoutError:
            raise InferenceTimeout(f"model stopped streaming for {self.request_timeout_s:g} s") from None
        finally:
            stop.set()
