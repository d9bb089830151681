"""The ``deploy`` component: :mod:`eyeops.pipeline.components.deploy`."""

from eyeops.pipeline.components.deploy import component, deploy, op

__all__ = ["component", "deploy", "op"]
