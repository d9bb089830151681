"""Training on Ray Train: ``train(recipe, dataset) -> CheckpointRef``.

- :mod:`eyeops.train.launcher` — the ``TorchTrainer`` (scaling, storage, retries, resume by run name).
- :mod:`eyeops.train.loop` — the one per-worker loop every family shares.
- :mod:`eyeops.train.strategies` — DDP (default) and DeepSpeed ZeRO engines.
"""

from eyeops.train.launcher import train

__all__ = ["train"]
