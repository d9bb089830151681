"""Ophthalmic data layer: schema, importers, synthetic fundus generator, data engine, quality, store.

Public stage: ``prepare(spec, out, name=...) -> DatasetRef``; readers: ``read_manifest``,
``load_samples``, ``load_dataset``.
"""

from eyeops.data.prepare import prepare
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
from eyeops.data.store import load_dataset, load_samples, local_dataset_dir, read_manifest

__all__ = [
    "IMAGE_TOKEN",
    "ODIR_LABELS",
    "ODIR_LABEL_NAMES",
    "DatasetRef",
    "Eye",
    "Manifest",
    "Message",
    "Modality",
    "Sample",
    "Split",
    "Task",
    "load_dataset",
    "load_samples",
    "local_dataset_dir",
    "prepare",
    "read_manifest",
]
