"""The ``prepare_data`` component: :mod:`eyeops.pipeline.components.prepare_data`."""

from eyeops.pipeline.components.prepare_data import component, op, prepare_data

__all__ = ["component", "op", "prepare_data"]
