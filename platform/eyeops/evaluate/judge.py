"""LLM-as-judge: an OpenAI-compatible chat endpoint grades free-text answers against references.

Off unless a recipe sets ``evaluate.judge`` (:class:`eyeops.recipes.JudgeSpec`: ``base_url``,
``model``, ``api_key_env``, optional ``rubric``). Each answer is one chat request at temperature 0:
the rubric as the system message, then question, reference and candidate. The judge must say
``Score: N`` (1..``max_score``); the score is rescaled to [0, 1]. A reply without a readable score
is counted (``judge_unparsed_rate``) and scores 0, so a judge that cannot be read never lifts a
model. The rubric and the judge's model and endpoint are written to ``<out>/judge/`` (the registry
logs the evaluation folder; the recipe's ``evaluate.judge`` section is logged as params), every
verdict to the ``judge_<task>`` table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from eyeops.errors import ConfigError, DataError

DEFAULT_RUBRIC = """You grade answers to ophthalmology questions against an expert's reference answer.
Judge clinical correctness and completeness, not style or length.
5 = clinically equivalent to the reference: correct and complete.
4 = correct, with a minor omission or imprecision.
3 = partly correct: misses or blurs a key fact.
2 = mostly incorrect or missing the key facts.
1 = wrong, unsafe or unrelated to the question.
Explain in at most two sentences, then end with a line "Score: N" where N is 1, 2, 3, 4 or 5."""

_REPLY_KEEP = 500  # characters of each judge reply kept in the table
_SCORE = re.compile(
    r"(?i)\b(?:score|rating|grade)\s*(?:is|of|=|:)?\s*\**\s*(\d{1,3})\**(?:\s*(?:/|out\s+of)\s*(\d{1,3}))?"
)
_FRACTION = re.compile(r"(?i)\b(\d{1,3})\s*(?:/|out\s+of)\s*(\d{1,3})\b")
_BARE = re.compile(r"^\W*(\d{1,3})\W*$")


class JudgeItem(NamedTuple):
    """One answer to grade."""

    id: str
    question: str
    reference: str
    prediction: str


@dataclass(frozen=True)
class JudgeResult:
    """Summary metrics, one row per verdict and the files that record the judge's set-up."""

    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    artifacts: dict[str, str] = field(default_factory=dict)


def parse_score(reply: str, max_score: int = 5) -> int | None:
    """The score a judge's reply gives (its last ``Score: N``, ``N/5`` or a bare number), else None."""
    found: list[tuple[str, str | None]] = [(m.group(1), m.group(2)) for m in _SCORE.finditer(reply)]
    if not found:
        found = [(m.group(1), m.group(2)) for m in _FRACTION.finditer(reply)]
    if not found and (bare := _BARE.match(reply)):
        found = [(bare.group(1), None)]
    if not found:
        return None
    value, scale = found[-1]
    if scale is not None and int(scale) != max_score:
        return None
    return int(value) if 1 <= int(value) <= max_score else None


def _client(spec: Any) -> Any:
    from openai import OpenAI

    key = "not-needed"
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env, "")
        if not key:
            raise ConfigError(
                f"evaluate.judge.api_key_env: environment variable {spec.api_key_env} is not set "
                "(set it, or api_key_env: null for an endpoint without a key)"
            )
    return OpenAI(base_url=spec.base_url, api_key=key, timeout=spec.timeout_s, max_retries=1)


def _ask(client: Any, spec: Any, rubric: str, item: JudgeItem) -> str:
    import openai

    prompt = (
        f"Question:\n{item.question}\n\nReference answer:\n{item.reference}\n\n"
        f"Candidate answer:\n{item.prediction}"
    )
    try:
        reply = client.chat.completions.create(
            model=spec.model,
            messages=[{"role": "system", "content": rubric}, {"role": "user", "content": prompt}],
            temperature=0.0,
            max_tokens=spec.max_tokens,
        )
    except openai.APIStatusError as exc:
        raise ConfigError(
            f"LLM judge {spec.model!r} at {spec.base_url}: HTTP {exc.status_code} on item {item.id!r}: "
            f"{str(exc)[:300]}"
        ) from None
    except openai.APIConnectionError as exc:
        raise ConfigError(f"LLM judge at {spec.base_url} is unreachable: {exc}") from None
    if not reply.choices:
        return ""
    return reply.choices[0].message.content or ""


def write_setup(spec: Any, out_dir: Path) -> dict[str, str]:
    """``judge/rubric.md`` and ``judge/config.json`` (model, endpoint, key variable, scale)."""
    folder = Path(out_dir) / "judge"
    folder.mkdir(parents=True, exist_ok=True)
    rubric = spec.rubric or DEFAULT_RUBRIC
    (folder / "rubric.md").write_text(rubric + "\n", encoding="utf-8")
    config = {
        "model": spec.model,
        "base_url": spec.base_url,
        "api_key_env": spec.api_key_env,
        "max_score": spec.max_score,
        "max_tokens": spec.max_tokens,
        "rubric": "default" if spec.rubric is None else "recipe",
        "temperature": 0.0,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return {"judge_rubric": str(folder / "rubric.md"), "judge_config": str(folder / "config.json")}


def judge_answers(spec: Any, items: Sequence[JudgeItem], out_dir: Path) -> JudgeResult:
    """Grade ``items`` (at most ``spec.max_items``, the first by id) with the judge ``spec``.

    Metrics: ``judge_score`` (mean rescaled score in [0, 1], unreadable replies scoring 0),
    ``judge_unparsed_rate`` and ``judge_n``.
    """
    if not items:
        raise DataError("no answers for the LLM judge to grade", field="items")
    picked = sorted(items, key=lambda it: it.id)[: spec.max_items]
    rubric = spec.rubric or DEFAULT_RUBRIC
    client = _client(spec)
    rows, total, unparsed = [], 0.0, 0
    for item in picked:
        reply = _ask(client, spec, rubric, item)
        score = parse_score(reply, spec.max_score)
        value = 0.0 if score is None else (score - 1) / (spec.max_score - 1)
        total += value
        unparsed += score is None
        rows.append(
            {
                "id": item.id,
                "judge_score": round(value, 6),
                "raw_score": "" if score is None else score,
                "status": "unparseable" if score is None else "ok",
                "reply": reply[:_REPLY_KEEP],
            }
        )
    n = len(picked)
    metrics = {"judge_score": total / n, "judge_unparsed_rate": unparsed / n, "judge_n": float(n)}
    return JudgeResult(metrics=metrics, rows=rows, artifacts=write_setup(spec, out_dir))
