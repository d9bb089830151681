"""The promotion gate: may a candidate replace ``@champion``?

Pure logic over numbers (no MLflow here) so every rule is testable by hand. Rules, in order:
the gate metric must exist; it must reach ``min_value``; every floor in ``floors`` must hold;
and, when there is a champion, the candidate must strictly improve on it by at least
``min_margin`` (a tie keeps the champion: retraining the same thing should not churn aliases).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from eyeops.recipes import GateSpec, Recipe

_EPS = 1e-9  # float noise: 0.85 - 0.80 must count as a 0.05 margin


class GateDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    passed: bool
    reason: str
    metric: str
    value: float | None
    champion_value: float | None = None
    champion_version: int | None = None


def gate_metric(recipe: Recipe) -> str:
    return recipe.register.gate.metric or recipe.evaluate.primary_metric


def _better(a: float, b: float, higher: bool) -> float:
    """How much ``a`` improves on ``b`` (positive = better) for the gate's direction."""
    return a - b if higher else b - a


def decide(
    gate: GateSpec,
    metric: str,
    metrics: Mapping[str, float],
    *,
    champion_value: float | None = None,
    champion_version: int | None = None,
) -> GateDecision:
    """Apply the gate to a candidate's flat eval metrics against the champion's value."""
    higher = gate.higher_is_better
    cmp = ">=" if higher else "<="

    def result(passed: bool, reason: str, value: float | None) -> GateDecision:
        return GateDecision(
            passed=passed,
            reason=reason,
            metric=metric,
            value=value,
            champion_value=champion_value,
            champion_version=champion_version,
        )

    if metric not in metrics:
        known = ", ".join(sorted(k for k in metrics if "/" not in k)) or "none"
        return result(False, f"gate metric {metric!r} missing from the evaluation (have: {known})", None)
    value = float(metrics[metric])
    if gate.min_value is not None and _better(value, gate.min_value, higher) < -_EPS:
        return result(False, f"{metric}={value:.4f} misses min_value {cmp} {gate.min_value:.4f}", value)
    for key, floor in sorted(gate.floors.items()):
        if key not in metrics:
            return result(
                False, f"floor {key!r} cannot be checked: metric missing from the evaluation", value
            )
        if _better(float(metrics[key]), floor, higher) < -_EPS:
            return result(False, f"floor {key}={metrics[key]:.4f} misses {cmp} {floor:.4f}", value)
    if champion_value is None:
        return result(True, f"no champion yet; {metric}={value:.4f} meets every floor", value)
    gain = _better(value, champion_value, higher)
    vs = f"{metric}={value:.4f} vs champion v{champion_version} {champion_value:.4f}"
    if gain <= _EPS:
        return result(False, f"{vs}: no improvement", value)
    if gain < gate.min_margin - _EPS:
        return result(False, f"{vs}: improvement {gain:.4f} below min_margin {gate.min_margin:.4f}", value)
    return result(True, f"{vs}: improves by {gain:.4f} (min_margin {gate.min_margin:.4f})", value)
