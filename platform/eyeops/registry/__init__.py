"""MLflow registry: log a training run and its model, gate it against ``@champion``, manage aliases.

Public API: :func:`register`, :func:`promote`, :func:`rollback`, :func:`show`, :func:`resolve`,
:func:`load_model_dir`; the pure gate rules are in :mod:`eyeops.registry.gate`, the chance and
base-model references it compares with in :mod:`eyeops.registry.baseline`.
"""

from eyeops.registry.gate import GateCheck, GateDecision, Reference, bootstrap_diff, decide, gate_metric
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
    "GateCheck",
    "GateDecision",
    "Reference",
    "RegisteredModelView",
    "ResolvedModel",
    "VersionInfo",
    "bootstrap_diff",
    "decide",
    "gate_metric",
    "load_model_dir",
    "promote",
    "register",
    "resolve",
    "rollback",
    "show",
]
