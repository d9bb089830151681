"""The KFP components, for readers and for KFP tooling run from a checkout (``from components
import train``). They are package code, :mod:`eyeops.pipeline.components` — typed shells that each
call one ``eyeops.pipeline.steps`` function — so an installed eyeops compiles without this folder.
"""

from eyeops.pipeline.components import deploy, evaluate, prepare_data, register, train

__all__ = ["deploy", "evaluate", "prepare_data", "register", "train"]
