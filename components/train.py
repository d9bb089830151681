"""The ``train`` component: :mod:`eyeops.pipeline.components.train`."""

from eyeops.pipeline.components.train import component, op, train

__all__ = ["component", "op", "train"]
