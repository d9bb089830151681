"""Ophthalmic data layer: schema, importers, synthetic fundus generator, data engine, quality, store."""

from eyeops.data.schema import (
    IMAGE_TOKEN,
    ODIR_LABEL_NAMES,
    ODIR_LABELS,
    DatasetRef,
    Eye,
    Manifest,
    Message,
    Modality,
    Sample,
    Split,
    Task,
)

__all__ = [
    "IMAGE_TOKEN", "ODIR_LABELS", "ODIR_LABEL_NAMES", "DatasetRef", "Eye", "Manifest", "Message",
    "Modality", "Sample", "Split", "Task",
]
