"""Serving: one family-agnostic Predictor, three faces (gateway, KServe, Ray Serve), local deploy.

Public API: :func:`load_predictor`, :class:`Predictor`, :func:`create_app`, :func:`install`,
:class:`ServeSettings`, :func:`deploy`, :func:`stop`. The KServe and Ray faces live in
``eyeops.serve.kserve_model`` and ``eyeops.serve.ray_app`` (imported on demand: heavy engines).
"""

from eyeops.serve.gateway import create_app, install
from eyeops.serve.predictor import ModelInfo, ModelStamp, Predictor, load_predictor
from eyeops.serve.settings import ServeSettings, load_serve_settings

__all__ = [
    "ModelInfo",
    "ModelStamp",
    "Predictor",
    "ServeSettings",
    "create_app",
    "install",
    "load_predictor",
    "load_serve_settings",
]
