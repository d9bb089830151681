"""KFP v2 lightweight components: typed shells that each call one ``eyeops.pipeline.steps`` function.

Every module exposes the plain function, ``component(base_image)`` (the KFP component built on the
eyeops image a cluster run uses) and ``op`` (built on the trainer image, ``TRAINER_IMAGE``: tasks may
train or evaluate on GPUs).
"""

from eyeops.pipeline.components import deploy, evaluate, prepare_data, register, train

__all__ = ["deploy", "evaluate", "prepare_data", "register", "train"]
