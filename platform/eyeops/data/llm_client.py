"""Calls to an OpenAI-compatible endpoint for the data engine: cache, budget, retries, concurrency.

- **Cache**: every reply is stored under ``sha256(model, sampling settings, messages)``; a rerun of
  the same prepare reads it back and makes no call (and spends no budget).
- **Budget**: ``max_calls`` / ``max_tokens`` bound the calls one prepare makes; once spent, the next
  call raises :class:`BudgetExhausted` and the engine falls back (templates) or rejects.
- **Retries**: the ``openai`` client retries connection errors, 408/409/429 and 5xx with backoff
  (``max_retries``); what still fails raises :class:`CallFailed` for that one item. A refused key
  or an unknown model fails the whole prepare with a :class:`~eyeops.errors.ConfigError`.
- **Concurrency**: :meth:`LLMSession.map` runs at most ``max_concurrency`` requests at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from eyeops import storage
from eyeops.data.specs import EngineSpec
from eyeops.errors import ConfigError

__all__ = ["BudgetExhausted", "CallFailed", "LLMSession"]

T = TypeVar("T")
R = TypeVar("R")


class BudgetExhausted(Exception):
    """The prepare's call or token budget is spent (internal: the engine decides what follows)."""


class CallFailed(Exception):
    """One call failed after the client's retries (internal: that item falls back or is rejected)."""


class _Cache:
    """One JSON file per reply, written atomically (concurrent workers and reruns share it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or a torn file from a killed writer: ask again
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        storage.write_text(self._path(key), json.dumps(value, ensure_ascii=False))


class LLMSession:
    """One prepare's connection to the endpoint, with its cache, budget and counters."""

    def __init__(self, engine: EngineSpec) -> None:
        from openai import OpenAI

        if engine.llm is None:
            raise ConfigError("data.engine.kind llm needs data.engine.llm (base_url, model)")
        self.engine, self.endpoint = engine, engine.llm
        key = os.environ.get(self.endpoint.api_key_env) or "unset"  # the client insists on a value
        self._client = OpenAI(
            base_url=self.endpoint.base_url,
            api_key=key,
            timeout=self.endpoint.timeout_s,
            max_retries=self.endpoint.max_retries,
        )
        root = Path(engine.cache_dir or storage.cache_dir("llm")).expanduser()
        self._cache = _Cache(root)
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()

    # --- one call ---------------------------------------------------------------------------------
    def cache_key(self, messages: list[dict[str, str]]) -> str:
        ident = {
            "model": self.endpoint.model,
            "temperature": self.endpoint.temperature,
            "max_tokens": self.endpoint.max_new_tokens,
            "messages": messages,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _reserve(self) -> None:
        with self._lock:
            spent = self.engine.max_calls is not None and self.stats["calls"] >= self.engine.max_calls
            tokens = self.stats["prompt_tokens"] + self.stats["completion_tokens"]
            spent = spent or (self.engine.max_tokens is not None and tokens >= self.engine.max_tokens)
            if spent:
                self.stats["over_budget"] += 1
                raise BudgetExhausted(self.budget_text())
            self.stats["calls"] += 1

    def budget_text(self) -> str:
        tokens = self.stats["prompt_tokens"] + self.stats["completion_tokens"]
        return (
            f"{self.stats['calls']}/{self.engine.max_calls or '∞'} calls, "
            f"{tokens}/{self.engine.max_tokens or '∞'} tokens"
        )

    def chat(self, system: str, user: str) -> str:
        """The reply to one system + user prompt: from the cache, else from the endpoint."""
        import openai

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        key = self.cache_key(messages)
        hit = self._cache.get(key)
        if hit is not None:
            with self._lock:
                self.stats["cache_hits"] += 1
            return str(hit["text"])
        self._reserve()
        try:
            reply = self._client.chat.completions.create(
                model=self.endpoint.model,
                messages=messages,  # type: ignore[arg-type]
                temperature=self.endpoint.temperature,
                max_tokens=self.endpoint.max_new_tokens,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ConfigError(
                f"data.engine.llm: {self.endpoint.base_url} refused the key from "
                f"${self.endpoint.api_key_env} ({exc.status_code})"
            ) from None
        except openai.NotFoundError as exc:
            raise ConfigError(
                f"data.engine.llm: {self.endpoint.base_url} has no model {self.endpoint.model!r} "
                f"or no chat completions route ({exc.message})"
            ) from None
        except openai.OpenAIError as exc:
            with self._lock:
                self.stats["failed"] += 1
            raise CallFailed(f"{type(exc).__name__}: {exc}") from None
        text = (reply.choices[0].message.content or "") if reply.choices else ""
        usage = reply.usage
        with self._lock:
            if usage is not None:
                self.stats["prompt_tokens"] += usage.prompt_tokens
                self.stats["completion_tokens"] += usage.completion_tokens
        self._cache.put(key, {"text": text, "model": self.endpoint.model})
        return text

    # --- many calls -------------------------------------------------------------------------------
    def map(self, fn: Callable[[T], R], items: Iterable[T], advance: Callable[[int], None]) -> list[R]:
        """``fn`` over ``items`` with at most ``max_concurrency`` in flight; results in order."""
        items = list(items)
        results: list[R] = []
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency) as pool:
            for result in pool.map(fn, items):
                results.append(result)
                advance(1)
        return results

    def report(self) -> dict[str, Any]:
        """What the manifest records about the endpoint and its use (never the key)."""
        return {
            "base_url": self.endpoint.base_url,
            "model": self.endpoint.model,
            "api_key_env": self.endpoint.api_key_env,
            "temperature": self.endpoint.temperature,
            "max_new_tokens": self.endpoint.max_new_tokens,
            "calls": {k: int(self.stats[k]) for k in ("calls", "cache_hits", "failed", "over_budget")},
            "tokens": {k: int(self.stats[k]) for k in ("prompt_tokens", "completion_tokens")},
            "budget": {"max_calls": self.engine.max_calls, "max_tokens": self.engine.max_tokens},
        }
