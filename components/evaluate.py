"""The ``evaluate`` component: :mod:`eyeops.pipeline.components.evaluate`."""

from eyeops.pipeline.components.evaluate import component, evaluate, op

__all__ = ["component", "evaluate", "op"]
