"""The evaluate stage: metrics, breakdown tables, plots and a model card for one checkpoint.

Public API: :func:`evaluate` (the stage) and :func:`classification_metrics` / :func:`breakdown`
(metrics on arrays). What a model is scored on is its family's ``evaluate(EvalContext) ->
EvalOutput`` hook (:mod:`eyeops.families`); both types are re-exported here.
"""

from eyeops.evaluate.metrics import ClassificationMetrics, LabelMetrics, breakdown, classification_metrics
from eyeops.evaluate.runner import evaluate
from eyeops.families import EvalContext, EvalOutput

__all__ = [
    "ClassificationMetrics",
    "EvalContext",
    "EvalOutput",
    "LabelMetrics",
    "breakdown",
    "classification_metrics",
    "evaluate",
]
