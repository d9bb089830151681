"""The ``register`` component: :mod:`eyeops.pipeline.components.register`."""

from eyeops.pipeline.components.register import component, op, register

__all__ = ["component", "op", "register"]
