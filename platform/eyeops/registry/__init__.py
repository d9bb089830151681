"""MLflow registry: log a training run and its model, gate it against ``@champion``, manage aliases.

Public API: :func:`register`, :func:`promote`, :func:`rollback`, :func:`show`, :func:`resolve`,
:func:`load_model_dir`; the pure gate rules are in :mod:`eyeops.registry.gate`.
"""

from eyeops.registry.gate import GateDecision, decide, gate_metric
from eyeops.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    RegisteredModelView,
    ResolvedModel,
    VersionInfo,
    load_model_dir,
    promote,
    register,
    resolve,
    rollback,
    show,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "GateDecision",
    "RegisteredModelView",
    "ResolvedModel",
    "VersionInfo",
    "decide",
    "gate_metric",
    "load_model_dir",
    "promote",
    "register",
    "resolve",
    "rollback",
    "show",
]
