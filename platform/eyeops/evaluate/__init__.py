"""The evaluate stage: metrics, breakdown tables, plots and a model card for one checkpoint.

Public API: :func:`evaluate` (the stage), :func:`classification_metrics` / :func:`breakdown`
(metrics on arrays), and the plug-in types :class:`EvalContext` / :class:`EvalOutput`: a family
object may define ``evaluate(ctx: EvalContext) -> EvalOutput`` to replace the default
:func:`classification_evaluator` (e.g. text metrics for LLM/VLM families).
"""

from eyeops.evaluate.metrics import ClassificationMetrics, LabelMetrics, breakdown, classification_metrics
from eyeops.evaluate.runner import EvalContext, EvalOutput, classification_evaluator, evaluate

__all__ = [
    "ClassificationMetrics",
    "EvalContext",
    "EvalOutput",
    "LabelMetrics",
    "breakdown",
    "classification_evaluator",
    "classification_metrics",
    "evaluate",
]
