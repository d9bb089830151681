"""The data engine's recipe sections (pure pydantic): ``data.engine`` and ``data.corpus``.

``engine.kind: template`` (the default) fills templates from labels and findings; ``llm`` asks an
OpenAI-compatible endpoint to write the items and a second prompt to check each one against its
source, with the template engine as the fallback for records the endpoint could not serve.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eyeops.models.common.specs import Strict

__all__ = ["CorpusSpec", "EngineSpec", "LLMEndpoint"]


class LLMEndpoint(Strict):
    """An OpenAI-compatible chat endpoint: an eyeops-served model or an external service."""

    base_url: str = Field(
        description="Base URL of the API, e.g. http://eyeops-gateway.eyeops.svc:8080/v1.",
        pattern=r"^https?://",
    )
    model: str = Field(min_length=1, description="Model name sent with every request (recorded).")
    api_key_env: str = Field(
        "EYEOPS_LLM_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the env var holding the API key (on a cluster: set from a Secret key); "
        "never the key itself. Unset: no key is sent.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries of a failed call (backoff by the client).")
    max_concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    temperature: float = Field(0.0, ge=0, le=2)
    max_new_tokens: int = Field(512, ge=8, le=32768, description="Completion tokens per call.")


class EngineSpec(Strict):
    """How labelled images and corpus passages become QA, reports, MCQs and essays."""

    kind: Literal["template", "llm"] = Field(
        "template", description="template: deterministic, offline (default); llm: generate + verify."
    )
    llm: LLMEndpoint | None = Field(None, description="The endpoint (required for kind llm).")
    verify: bool = Field(
        True, description="Check every generated item against its source with a second prompt."
    )
    items_per_record: int = Field(3, ge=1, le=20, description="QA items asked per image or passage.")
    max_calls: int | None = Field(
        2000, ge=1, description="Budget: most endpoint calls per prepare (cache hits are free)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Budget: most prompt + completion tokens per prepare (as reported)."
    )
    cache_dir: str | None = Field(
        None,
        description="Response cache (keyed by model + prompt hash): a rerun costs no calls. Default "
        "<storage_root>/cache/llm (~/.cache/eyeops/llm when the storage root is on S3).",
    )
    fallback: bool = Field(
        True,
        description="Image records the endpoint could not serve (error, budget) get template items.",
    )

    @model_validator(mode="after")
    def _endpoint(self) -> EngineSpec:
        if self.kind == "llm" and self.llm is None:
            raise ValueError("data.engine.kind llm needs data.engine.llm (base_url, model)")
        return self


class CorpusSpec(Strict):
    """Ophtimus-style corpus: PDF/HTML/text → clean passages → filters → dedup → packed documents."""

    passage_words: int = Field(220, ge=20, le=5000, description="Target words per passage.")
    min_words: int = Field(25, ge=1, description="Passages shorter than this are filtered out.")
    min_alpha_ratio: float = Field(
        0.6, ge=0, le=1, description="Least share of letters among non-space characters (tables, refs)."
    )
    max_repeat_ratio: float = Field(
        0.3, ge=0, le=1, description="Most share of the passage taken by its most frequent word-3-gram."
    )
    dedup_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard estimate above which a passage is a near-duplicate."
    )
    summarize: bool = Field(
        False, description="Map-reduce summary of each document with the engine's LLM (kind llm)."
    )
    pack_words: int = Field(
        1024, ge=50, le=100_000, description="Continued-pretraining documents: passages packed to ~N words."
    )
