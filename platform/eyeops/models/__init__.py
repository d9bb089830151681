"""Model families, one module each; every module exposes ``FAMILY`` (see :mod:`eyeops.families`).

- :mod:`eyeops.models.classifier` — timm backbone + multi-label head (fundus classification).

Modules are imported lazily through :func:`eyeops.families.get_family`, so importing this package
never pulls torch or timm.
"""
