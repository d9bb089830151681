"""The promotion gate: may a candidate replace ``@champion``?

Pure logic over numbers (no MLflow here) so every rule is testable by hand. Checks, in order:
the gate metric must exist; it must reach ``min_value``; every floor in ``floors`` must hold; it
must beat chance/majority (``chance``) and the base model's zero-shot score (``baseline``) — each
by the **lower bound of a paired bootstrap confidence interval** of candidate − reference above
``min_margin``; and, when there is a champion, it must strictly improve on it by at least
``min_margin`` (a tie keeps the champion: retraining the same thing should not churn aliases).
Every check is recorded (:class:`GateCheck`); the decision fails when any check fails and
``failed`` names those that did.

The bootstrap rule, precisely: over the ``n`` items both were scored on, draw ``bootstrap`` resamples
of ``n`` items with replacement (seed 0), take δ = mean(candidate) − mean(reference) on each (the
sign flipped when lower is better), and pass when the ``(1 − confidence) / 2`` quantile of δ — the
lower end of the two-sided ``confidence`` interval — is strictly greater than ``min_margin``. A
metric without per-item scores (e.g. a corpus-level BLEU, macro AUC) is compared on its point
value, and the check's detail says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from eyeops.recipes import GateSpec, Recipe

_EPS = 1e-9  # float noise: 0.85 - 0.80 must count as a 0.05 margin
CheckName = Literal["metric", "min_value", "floor", "chance", "base_model", "champion"]


class GateCheck(BaseModel):
    """One comparison the gate made."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: CheckName
    passed: bool
    detail: str
    reference: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


class Reference(BaseModel):
    """Something the candidate must beat: chance/majority or the base model, with per-item scores
    keyed by sample id when available (``error``: it could not be computed, and the check fails)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["chance", "base_model"]
    label: str
    value: float | None = None
    candidate_items: dict[str, float] | None = None
    reference_items: dict[str, float] | None = None
    error: str | None = None


class GateDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    passed: bool
    reason: str
    metric: str
    value: float | None
    champion_value: float | None = None
    champion_version: int | None = None
    checks: list[GateCheck] = []
    failed: list[str] = []


def gate_metric(recipe: Recipe) -> str:
    return recipe.register.gate.metric or recipe.evaluate.primary_metric


def _better(a: float, b: float, higher: bool) -> float:
    """How much ``a`` improves on ``b`` (positive = better) for the gate's direction."""
    return a - b if higher else b - a


def bootstrap_diff(
    candidate: Sequence[float],
    reference: Sequence[float],
    *,
    samples: int,
    confidence: float,
    higher: bool = True,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of mean(candidate) − mean(reference): (point, low, high) of the interval."""
    c, r = np.asarray(candidate, dtype=float), np.asarray(reference, dtype=float)
    if c.shape != r.shape or c.size == 0:
        raise ValueError(f"paired bootstrap needs equal non-empty arrays (got {c.size} and {r.size})")
    d = c - r if higher else r - c
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // d.size)  # resample in chunks: a 100k-item benchmark stays small
    means = np.concatenate(
        [
            d[rng.integers(0, d.size, size=(min(chunk, samples - start), d.size))].mean(axis=1)
            for start in range(0, samples, chunk)
        ]
    )
    tail = (1.0 - confidence) / 2.0
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def compare(gate: GateSpec, metric: str, value: float, ref: Reference) -> GateCheck:
    """The candidate against one reference (see the module docstring for the rule)."""
    higher, margin = gate.higher_is_better, gate.min_margin
    what = f"{metric} vs {ref.label}"
    if ref.error:
        return GateCheck(name=ref.name, passed=False, detail=f"{what}: cannot compare: {ref.error}")
    cand, items = ref.candidate_items, ref.reference_items
    shared = sorted(set(cand) & set(items)) if cand is not None and items is not None else []
    if cand is not None and items is not None and not shared:
        detail = f"{what}: cannot compare: no scored item in common ({len(cand)} vs {len(items)} items)"
        return GateCheck(name=ref.name, passed=False, detail=detail)
    if shared:
        ref_value = ref.value if ref.value is not None else float(np.mean([items[k] for k in shared]))
        point, low, high = bootstrap_diff(
            [cand[k] for k in shared],
            [items[k] for k in shared],
            samples=gate.bootstrap_samples,
            confidence=gate.confidence,
            higher=higher,
        )
        passed = low > margin + _EPS
        ci = f"{gate.confidence:.0%} CI [{low:+.4f}, {high:+.4f}] over {len(shared)} items"
        verdict = "beats it" if passed else "does not beat it"
        detail = (
            f"{what} {ref_value:.4f}: difference {point:+.4f}, {ci}; lower bound must exceed "
            f"{margin:.4f}: {verdict}"
        )
        return GateCheck(
            name=ref.name,
            passed=passed,
            detail=detail,
            reference=ref_value,
            diff=point,
            ci_low=low,
            ci_high=high,
        )
    if ref.value is None:
        return GateCheck(name=ref.name, passed=False, detail=f"{what}: no reference value")
    gain = _better(value, ref.value, higher)
    passed = gain > margin + _EPS
    detail = (
        f"{what} {ref.value:.4f}: difference {gain:+.4f} (point estimate: no per-item scores to "
        f"bootstrap); must exceed {margin:.4f}: {'beats it' if passed else 'does not beat it'}"
    )
    return GateCheck(name=ref.name, passed=passed, detail=detail, reference=ref.value, diff=gain)


def decide(
    gate: GateSpec,
    metric: str,
    metrics: Mapping[str, float],
    *,
    champion_value: float | None = None,
    champion_version: int | None = None,
    references: Sequence[Reference] = (),
) -> GateDecision:
    """Apply the gate to a candidate's flat eval metrics against the references and the champion."""
    higher = gate.higher_is_better
    cmp = ">=" if higher else "<="

    def result(checks: list[GateCheck], value: float | None) -> GateDecision:
        failed = [c for c in checks if not c.passed]
        reason = "; ".join(c.detail for c in failed) if failed else checks[-1].detail
        if not failed and len(checks) > 1:
            passed_names = ", ".join(dict.fromkeys(c.name for c in checks))
            reason = f"{checks[-1].detail} (passed: {passed_names})"
        return GateDecision(
            passed=not failed,
            reason=reason,
            metric=metric,
            value=value,
            champion_value=champion_value,
            champion_version=champion_version,
            checks=checks,
            failed=list(dict.fromkeys(c.name for c in failed)),
        )

    if metric not in metrics:
        known = ", ".join(sorted(k for k in metrics if "/" not in k)) or "none"
        detail = f"gate metric {metric!r} missing from the evaluation (have: {known})"
        return result([GateCheck(name="metric", passed=False, detail=detail)], None)
    value = float(metrics[metric])
    checks: list[GateCheck] = []
    if gate.min_value is not None:
        ok = _better(value, gate.min_value, higher) >= -_EPS
        word = "meets" if ok else "misses"
        detail = f"{metric}={value:.4f} {word} min_value {cmp} {gate.min_value:.4f}"
        checks.append(GateCheck(name="min_value", passed=ok, detail=detail, reference=gate.min_value))
    for key, floor in sorted(gate.floors.items()):
        if key not in metrics:
            detail = f"floor {key!r} cannot be checked: metric missing from the evaluation"
            checks.append(GateCheck(name="floor", passed=False, detail=detail))
            continue
        ok = _better(float(metrics[key]), floor, higher) >= -_EPS
        detail = f"floor {key}={metrics[key]:.4f} {'meets' if ok else 'misses'} {cmp} {floor:.4f}"
        checks.append(GateCheck(name="floor", passed=ok, detail=detail, reference=floor))
    checks += [compare(gate, metric, value, ref) for ref in references]
    checks.append(_champion_check(gate, metric, value, champion_value, champion_version))
    return result(checks, value)


def _champion_check(
    gate: GateSpec, metric: str, value: float, champion_value: float | None, champion_version: int | None
) -> GateCheck:
    if champion_value is None:
        return GateCheck(name="champion", passed=True, detail=f"no champion yet; {metric}={value:.4f}")
    gain = _better(value, champion_value, gate.higher_is_better)
    vs = f"{metric}={value:.4f} vs champion v{champion_version} {champion_value:.4f}"
    if gain <= _EPS:
        return GateCheck(
            name="champion", passed=False, detail=f"{vs}: no improvement", reference=champion_value
        )
    if gain < gate.min_margin - _EPS:
        detail = f"{vs}: improvement {gain:.4f} below min_margin {gate.min_margin:.4f}"
        return GateCheck(name="champion", passed=False, detail=detail, reference=champion_value, diff=gain)
    detail = f"{vs}: improves by {gain:.4f} (min_margin {gate.min_margin:.4f})"
    return GateCheck(name="champion", passed=True, detail=detail, reference=champion_value, diff=gain)
