"""Training on Ray Train: ``train(recipe, dataset) -> CheckpointRef``.

- :mod:`eyeops.train.launcher` — the ``TorchTrainer`` (scaling, storage, retries, resume by run name).
- :mod:`eyeops.train.loop` — the one per-worker loop every family shares.
- :mod:`eyeops.train.strategies` — DDP (default) and DeepSpeed ZeRO engines.
- :mod:`eyeops.train.job` — the RayJob entrypoint (cluster mode).

``train`` is imported lazily so that ``eyeops.train.job`` and the CLI start without Ray and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eyeops.train.launcher import train

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from eyeops.train.launcher import train

        return train
    raise AttributeError(f"module 'eyeops.train' has no attribute {name!r}")
